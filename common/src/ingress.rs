//! The ingress path shared by HTTP (`allo-api`) and Socket.IO (`allo-fanout`): a validated
//! command becomes an envelope, is published to the command stream with `Nats-Msg-Id` =
//! commandId, and answers with the ids it was given.

use async_nats::jetstream::{self, message::PublishMessage};

use crate::auth::Caller;
use crate::command::{CommandEnvelope, CommandStatus};
use crate::config::{Limits, Settings};
use crate::ids::CommandId;
use crate::ops::{self, Operation, ParseContext, RequestError};
use crate::subjects::Subjects;
use crate::trace::{self, TraceContext};

/// Builds the envelope for one request body (already JSON).
pub fn envelope(
    caller: &Caller,
    op: Operation,
    body: serde_json::Value,
    command_id: CommandId,
    limits: &Limits,
) -> Result<CommandEnvelope, RequestError> {
    let ctx = ParseContext {
        caller,
        command_id,
        limits,
    };
    let command = ops::parse_value(op, body, &ctx)?;
    Ok(CommandEnvelope {
        command_id,
        actor: caller.user.clone(),
        roles: caller.roles.clone(),
        at: chrono::Utc::now(),
        command,
        reply_outcome: false,
    })
}

/// Publishes a command and waits for JetStream's acknowledgement, in a new trace (see
/// [`publish_traced`]).
pub async fn publish(
    js: &jetstream::Context,
    subjects: &Subjects,
    envelope: &CommandEnvelope,
) -> Result<(), String> {
    publish_traced(js, subjects, envelope, &TraceContext::start()).await
}

/// Publishes a command and waits for JetStream's acknowledgement. A repeat inside the duplicate
/// window is dropped by NATS; a later one by the worker's `commands` key. The command id and
/// `trace` ride in its headers (`Allo-Command-Id`, `traceparent`) for the worker to continue.
pub async fn publish_traced(
    js: &jetstream::Context,
    subjects: &Subjects,
    envelope: &CommandEnvelope,
    trace: &TraceContext,
) -> Result<(), String> {
    // The client buffers publishes while disconnected and sends them on reconnect, after the
    // request was answered 503: refuse up front instead, so a 503 means "not stored".
    if js.client().connection_state() != async_nats::connection::State::Connected {
        return Err(unavailable("command publish", "NATS is not connected"));
    }
    let subject = subjects.command(envelope);
    let payload = serde_json::to_vec(envelope).map_err(|e| unavailable("command encoding", e))?;
    let message = PublishMessage::build()
        .headers(trace::headers(envelope.command_id, trace))
        .message_id(envelope.command_id.to_string())
        .payload(payload.into());
    js.send_publish(subject, message)
        .await
        .map_err(|e| unavailable("command not accepted", e))?
        .await
        .map_err(|e| unavailable("command not accepted", e))?;
    Ok(())
}

/// What a client reads when its command could not be taken (nothing was stored). The broker's
/// own error names internals (servers, subjects, streams), so it goes to the log, not to them.
pub const UNAVAILABLE: &str = "the command could not be taken now (the message broker is unavailable or busy); \
     nothing was accepted, retry shortly";

fn unavailable(stage: &'static str, error: impl std::fmt::Display) -> String {
    tracing::warn!(stage, %error, "command not accepted");
    UNAVAILABLE.to_string()
}

/// Whether a user may submit one more command now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Over the limit; the current window ends in this many seconds.
    Limited {
        retry_after_secs: u64,
    },
}

/// JetStream's error code for "maximum messages per subject exceeded".
const PER_SUBJECT_LIMIT: jetstream::ErrorCode = jetstream::ErrorCode(10077);

/// Tokens of users' budgets this replica has leased from the rate stream and not spent yet.
///
/// One message on a user's rate subject is a lease of [`lease_size`] tokens, so the rate
/// stream sees one publish per lease instead of one per command. A user's requests on one
/// replica take their tokens one at a time under that user's lock, so concurrent requests
/// lease no more than they spend. Only local bookkeeping: a replica that dies loses its
/// unspent tokens (the user gets fewer, never more, than the limit), and a lease left over at
/// the end of a window expires with it.
#[derive(Debug, Default)]
pub struct RateLeases {
    unspent: std::sync::Mutex<UnspentTokens>,
}

/// The current window and each user's unspent tokens in it.
type UnspentTokens = (
    u64,
    std::collections::HashMap<crate::ids::UserId, std::sync::Arc<tokio::sync::Mutex<u64>>>,
);

impl RateLeases {
    /// The user's unspent tokens in this window (a fresh, empty slot the first time).
    fn slot(
        &self,
        user: &crate::ids::UserId,
        window: u64,
    ) -> std::sync::Arc<tokio::sync::Mutex<u64>> {
        let Ok(mut unspent) = self.unspent.lock() else {
            return Default::default();
        };
        let (current, users) = &mut *unspent;
        if window > *current {
            // Leases of past windows are worthless: dropping them all when a window starts
            // bounds the map by the users active in the current one, at no cost per request.
            *current = window;
            users.clear();
        } else if window < *current {
            // A request that read the clock just before the window turned: no lease for it.
            return Default::default();
        }
        users.entry(user.clone()).or_default().clone()
    }
}

/// Tokens per lease: a twentieth of the budget (at most 100), so small budgets stay exact
/// (a budget under 40 leases one token at a time) and a user spread over several replicas
/// loses at most one lease per replica to leftovers.
pub fn lease_size(max_per_window: i64) -> u64 {
    (max_per_window / 20).clamp(1, 100) as u64
}

/// Counts one command against the user's budget for the current window, shared by every
/// ingress replica through the rate stream (in leases of [`lease_size`] tokens). Recreates the
/// stream if it is gone (a NATS that lost its store), so ingress heals itself instead of
/// refusing forever.
pub async fn admit(
    js: &jetstream::Context,
    subjects: &Subjects,
    user: &crate::ids::UserId,
    settings: &Settings,
    leases: &RateLeases,
) -> Result<Admission, String> {
    let window_secs = settings.limits.rate_window_secs.max(1);
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let window = now / window_secs;
    let slot = leases.slot(user, window);
    let mut unspent = slot.lock().await;
    if *unspent > 0 {
        *unspent -= 1;
        return Ok(Admission::Allowed);
    }
    for attempt in 0..2 {
        let ack = js
            .publish(subjects.rate(user, window), bytes::Bytes::new())
            .await
            .map_err(|e| unavailable("rate check", e))?
            .await;
        match ack {
            Ok(_) => {
                *unspent = lease_size(settings.limits.rate_max_per_window) - 1;
                return Ok(Admission::Allowed);
            }
            Err(e) if is_per_subject_limit(&e) => {
                return Ok(Admission::Limited {
                    retry_after_secs: (window + 1) * window_secs - now,
                });
            }
            Err(e)
                if attempt == 0
                    && e.kind() == jetstream::context::PublishErrorKind::StreamNotFound =>
            {
                let config = crate::jetstream::rate_stream_config(settings, subjects);
                js.create_stream(config)
                    .await
                    .map_err(|e| unavailable("rate stream", e))?;
            }
            Err(e) => return Err(unavailable("rate check", e)),
        }
    }
    Err(unavailable("rate check", "the rate stream is unavailable"))
}

fn is_per_subject_limit(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|js| js.error_code() == PER_SUBJECT_LIMIT)
}

/// What an `Idempotency-Key` maps to, now that this request claimed it.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyClaim {
    /// First use of the key (or a repeat with the same body): go on, the command id is the
    /// key's and NATS or the worker drop a repeat.
    Proceed,
    /// The key was used for another body: refuse (as payment APIs do), do not answer with the
    /// first command.
    Reused,
}

/// The stream that remembers, per idempotency key (by its command id), the fingerprint of the
/// first body sent with it: one message per subject, the second refused, kept for the duplicate
/// window. In JetStream, so every API replica sees it and it survives an API restart.
pub fn idempotency_stream(subjects: &Subjects) -> String {
    format!(
        "{}_IDEM",
        subjects.prefix().to_ascii_uppercase().replace('-', "_")
    )
}

fn idempotency_subject(subjects: &Subjects, command_id: CommandId) -> String {
    format!("{}.idem.{command_id}", subjects.prefix())
}

fn idempotency_stream_config(
    settings: &Settings,
    subjects: &Subjects,
) -> jetstream::stream::Config {
    let window = std::time::Duration::from_secs(settings.jetstream.duplicate_window_secs.max(1));
    jetstream::stream::Config {
        name: idempotency_stream(subjects),
        description: Some("Allo: the body fingerprint first sent with each Idempotency-Key".into()),
        subjects: vec![format!("{}.idem.*", subjects.prefix())],
        retention: jetstream::stream::RetentionPolicy::Limits,
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        max_messages_per_subject: 1,
        max_age: window,
        num_replicas: settings.jetstream.replicas,
        ..Default::default()
    }
}

/// The fingerprint of a request: its operation and its JSON body (object keys sorted, so the
/// same body spelled in another key order or spacing is the same request).
pub fn fingerprint(command_id: CommandId, op: Operation, body: &serde_json::Value) -> String {
    let canonical = format!("{}\n{body}", op.as_str());
    uuid::Uuid::new_v5(&command_id.0, canonical.as_bytes()).to_string()
}

/// Claims the key's command id for this fingerprint: the first claim wins (JetStream refuses a
/// second message on the subject); a later claim proceeds only with the same fingerprint.
pub async fn claim_idempotency_key(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &Settings,
    command_id: CommandId,
    fingerprint: &str,
) -> Result<KeyClaim, String> {
    let subject = idempotency_subject(subjects, command_id);
    for attempt in 0..2 {
        let ack = js
            .publish(subject.clone(), fingerprint.to_string().into())
            .await
            .map_err(|e| unavailable("idempotency key", e))?
            .await;
        match ack {
            Ok(_) => return Ok(KeyClaim::Proceed),
            Err(e) if is_per_subject_limit(&e) => {
                let stream = js
                    .get_stream(idempotency_stream(subjects))
                    .await
                    .map_err(|e| unavailable("idempotency key", e))?;
                let first = stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .map_err(|e| unavailable("idempotency key", e))?;
                return Ok(if first.payload.as_ref() == fingerprint.as_bytes() {
                    KeyClaim::Proceed
                } else {
                    KeyClaim::Reused
                });
            }
            Err(e)
                if attempt == 0
                    && e.kind() == jetstream::context::PublishErrorKind::StreamNotFound =>
            {
                js.get_or_create_stream(idempotency_stream_config(settings, subjects))
                    .await
                    .map_err(|e| unavailable("idempotency stream", e))?;
            }
            Err(e) => return Err(unavailable("idempotency key", e)),
        }
    }
    Err(unavailable("idempotency key", "the stream is unavailable"))
}

/// `{commandId, status: "accepted", ...assigned ids}`.
pub fn accepted_body(envelope: &CommandEnvelope) -> serde_json::Map<String, serde_json::Value> {
    let mut body = envelope.command.assigned_ids();
    body.insert("commandId".into(), envelope.command_id.to_string().into());
    body.insert("status".into(), serde_json::json!(CommandStatus::Accepted));
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fingerprint_is_the_operation_and_the_json_value() {
        let id = CommandId::generate();
        let body: serde_json::Value =
            serde_json::from_str(r#"{"conversationID": "c", "message": "hi"}"#).unwrap();
        let reordered: serde_json::Value =
            serde_json::from_str(r#"{ "message":"hi","conversationID":"c" }"#).unwrap();
        let same = fingerprint(id, Operation::SendMessage, &body);
        assert_eq!(same, fingerprint(id, Operation::SendMessage, &reordered));
        assert_ne!(
            same,
            fingerprint(
                id,
                Operation::SendMessage,
                &json!({"conversationID": "c", "message": "hi!"})
            )
        );
        assert_ne!(same, fingerprint(id, Operation::EditMessage, &body));
        assert_ne!(
            same,
            fingerprint(CommandId::generate(), Operation::SendMessage, &body)
        );
    }

    #[test]
    fn the_idempotency_stream_keeps_one_fingerprint_per_key_for_the_window() {
        let settings = Settings::default();
        let subjects = Subjects::new("t-x1", 16);
        let config = idempotency_stream_config(&settings, &subjects);
        assert_eq!(config.name, "T_X1_IDEM");
        assert_eq!(config.subjects, vec!["t-x1.idem.*".to_string()]);
        assert_eq!(config.max_messages_per_subject, 1);
        assert!(config.discard_new_per_subject);
        assert_eq!(
            config.max_age,
            std::time::Duration::from_secs(settings.jetstream.duplicate_window_secs)
        );
        let id = CommandId::generate();
        assert_eq!(
            idempotency_subject(&subjects, id),
            format!("t-x1.idem.{id}")
        );
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;
    use crate::ids::UserId;

    #[test]
    fn small_budgets_lease_one_token_at_a_time() {
        assert_eq!(lease_size(5), 1);
        assert_eq!(lease_size(39), 1);
        assert_eq!(lease_size(120), 6);
        assert_eq!(lease_size(1_000_000_000), 100);
    }

    #[test]
    fn each_user_and_window_has_its_own_tokens_and_old_windows_go() {
        let leases = RateLeases::default();
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let a7 = leases.slot(&alice, 7);
        assert!(std::sync::Arc::ptr_eq(&a7, &leases.slot(&alice, 7)));
        assert!(!std::sync::Arc::ptr_eq(&a7, &leases.slot(&bob, 7)));
        assert!(!std::sync::Arc::ptr_eq(&a7, &leases.slot(&alice, 8)));
        assert!(
            !std::sync::Arc::ptr_eq(&a7, &leases.slot(&alice, 7)),
            "window 8 dropped window 7's tokens"
        );
    }
}
