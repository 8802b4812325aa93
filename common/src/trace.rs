//! Following one command through every service: its id and a W3C trace context
//! (`traceparent`, <https://www.w3.org/TR/trace-context/>) travel in NATS headers from ingress
//! to the worker (on the command) and on to the fan-out and backend subscribers (on its
//! events). Each service logs the command inside a span with `command_id` and `trace_id`.
//!
//! Read it as: [`TraceContext::continue_or_start`] at ingress, [`headers`] on every publish,
//! [`from_headers`] where a message is received.

use async_nats::HeaderMap;

use crate::ids::CommandId;

/// The W3C header, also on NATS messages.
pub const TRACEPARENT: &str = "traceparent";
/// The command an event (or the command message itself) belongs to.
pub const COMMAND_ID: &str = "Allo-Command-Id";
/// The `tracing` target of the one line per command each service logs at debug level
/// (`RUST_LOG=info,allo::trace=debug`).
pub const TARGET: &str = "allo::trace";

/// A trace id and the id of the span that is the parent of whatever receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    /// `01` = sampled; kept as the caller sent it.
    pub flags: u8,
}

impl TraceContext {
    /// A `traceparent` value: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`. Refuses
    /// what the specification refuses (version `ff`, an all-zero id, upper-case hex); a later
    /// version's extra fields are ignored, as the specification asks.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut parts = header.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let context = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }

    /// A new trace (sampled).
    pub fn start() -> Self {
        Self {
            trace_id: uuid::Uuid::new_v4().as_u128(),
            span_id: new_span_id(),
            flags: 1,
        }
    }

    /// The same trace, one hop further: a new span id for this service's part.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// Continues the caller's trace if its `traceparent` is valid, else starts one.
    pub fn continue_or_start(header: Option<&str>) -> Self {
        header
            .and_then(Self::parse)
            .map(|parent| parent.child())
            .unwrap_or_else(Self::start)
    }

    /// The `traceparent` value naming this context as the parent.
    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The trace id as logs and tracing systems show it (32 lower-case hex digits).
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

fn new_span_id() -> u64 {
    // Never zero (invalid in W3C): the low half of a random UUID, with one bit forced.
    (uuid::Uuid::new_v4().as_u128() as u64) | 1
}

/// The headers that carry a command's id and trace on NATS (besides `Nats-Msg-Id`).
pub fn headers(command_id: CommandId, trace: &TraceContext) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(COMMAND_ID, command_id.to_string().as_str());
    headers.insert(TRACEPARENT, trace.header().as_str());
    headers
}

/// What a received message carries: its command id and trace context, where present.
pub fn from_headers(headers: Option<&HeaderMap>) -> (Option<String>, Option<TraceContext>) {
    let Some(headers) = headers else {
        return (None, None);
    };
    let command = headers.get(COMMAND_ID).map(|v| v.as_str().to_string());
    let trace = headers
        .get(TRACEPARENT)
        .and_then(|v| TraceContext::parse(v.as_str()));
    (command, trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_an_invalid_one_starts_a_trace() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse(given).unwrap();
        assert_eq!(parsed.header(), given);
        let next = TraceContext::continue_or_start(Some(given));
        assert_eq!(next.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(next.span_id, parsed.span_id);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "nonsense",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
            let fresh = TraceContext::continue_or_start(Some(bad));
            assert_ne!(fresh.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(TraceContext::parse(future).is_some());
    }

    #[test]
    fn headers_round_trip() {
        let command = CommandId::generate();
        let trace = TraceContext::start();
        let (id, back) = from_headers(Some(&headers(command, &trace)));
        assert_eq!(id, Some(command.to_string()));
        assert_eq!(back, Some(trace));
    }
}
