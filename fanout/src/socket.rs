//! Socket handlers. The handshake checks `auth: {token}`. Client events:
//! - `joinConversation` (`"<id>"` or `{conversationID, lastSeq?}`): participants only; replays
//!   what the socket missed after `lastSeq`, then live events; the ack says
//!   `{joined, recovered, replayed, lastSeq}`.
//! - `leaveConversation`, `typing` (`{conversationID, typing}`), `presence`
//!   (`{conversationID}`; ack: who is online, across replicas).
//! - The original's other client events (`sendMessage`, `editMessage`, ... seventeen), with the
//!   original's bodies: validated and published exactly as over HTTP (`allo_common::ingress`);
//!   the ack carries the `commandId` (or the problem).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allo_common::auth::Caller;
use allo_common::ids::{CommandId, ConversationId};
use allo_common::ingress;
use allo_common::ops::reports::MODERATOR_ROLE;
use allo_common::ops::{Operation, RequestError};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Data, Event, Extension, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use crate::limits::SocketSlot;
use crate::registry::{FeedCommand, TypingSignal};
pub use crate::socket_state::SocketState;
use crate::state::{Fanout, MODERATORS_ROOM, user_room};

#[derive(Debug, Deserialize)]
pub struct HandshakeAuth {
    token: String,
}

/// Why a handshake was refused (the client's `connect_error` message).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("too_many_sockets: at most {0} sockets per user on this server; close one and retry")]
    TooManySockets(usize),
}

/// The original's client events that become commands (joinConversation joins the room instead).
const COMMAND_EVENTS: [Operation; 17] = [
    Operation::CreateConversation,
    Operation::SendMessage,
    Operation::SendSecureMessage,
    Operation::ReportMessage,
    Operation::EditMessage,
    Operation::DeleteMessage,
    Operation::ForwardMessage,
    Operation::MessageRead,
    Operation::PinMessage,
    Operation::ReactionMessage,
    Operation::ScheduleMessage,
    Operation::UnsendMessage,
    Operation::SendEphemeralMessage,
    Operation::SendVoiceMessage,
    Operation::SendSticker,
    Operation::CreatePoll,
    Operation::VotePoll,
];

/// Connect middleware: a socket without a valid token never connects (`connect_error`).
pub async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<HandshakeAuth>,
    State(fanout): State<Arc<Fanout>>,
) -> Result<(), Refused> {
    let auth =
        auth.map_err(|_| Refused::Unauthorized("the handshake must carry auth: {token}".into()))?;
    let caller = fanout
        .keys
        .verify(&auth.token)
        .map_err(|e| Refused::Unauthorized(e.to_string()))?;
    let max = fanout.settings.limits.fanout.sockets_per_user;
    let slot = fanout
        .sockets
        .take(&caller.user, max)
        .ok_or(Refused::TooManySockets(max))?;
    socket.extensions.insert(Arc::new(slot));
    socket.extensions.insert(SocketState::default());
    // Here, not in `on_connect`: socketioxide sends the `connect` packet once this middleware
    // returns and only then spawns the connect handler, so a client that emits at once (a
    // `joinConversation` on `connect`) could reach a socket with no handler yet, and the event
    // would be dropped without an ack.
    socket.join(user_room(&caller.user));
    if caller.has_role(MODERATOR_ROLE) {
        socket.join(MODERATORS_ROOM);
    }
    register_handlers(&socket);
    tracing::debug!(sid = %socket.id, user = %caller.user, "socket connected");
    metrics::gauge!("allo_sockets_connected").increment(1.0);
    socket.extensions.insert(caller);
    Ok(())
}

/// The connect handler proper: everything a socket needs is in place (see [`authenticate`]).
pub async fn on_connect(socket: SocketRef, State(fanout): State<Arc<Fanout>>) {
    fanout
        .deadlines
        .watch(&socket, fanout.settings.auth.refresh_notice_secs);
}

fn register_handlers(socket: &SocketRef) {
    // One fallback handler that dispatches by name, not one `on` per event: socketioxide keeps
    // each socket's handlers in a map of its own, and 22 entries were 1.3 KB per socket.
    socket.on_fallback(dispatch);
    socket.on_disconnect(on_disconnect);
}

/// Every client event: routed by its name (unknown names are ignored).
async fn dispatch(
    socket: SocketRef,
    Event(event): Event,
    Data(data): Data<Value>,
    ack: AckSender,
    Extension(caller): Extension<Caller>,
    Extension(state): Extension<SocketState>,
    State(fanout): State<Arc<Fanout>>,
) {
    let (data, fanout) = (Data(data), State(fanout));
    match event.as_str() {
        "joinConversation" => {
            let (caller, state) = (Extension(caller), Extension(state));
            crate::join::join_conversation(socket, data, ack, caller, state, fanout).await;
        }
        "leaveConversation" => {
            leave_conversation(socket, data, ack, Extension(state), fanout).await
        }
        "typing" => {
            typing(
                socket,
                data,
                ack,
                Extension(caller),
                Extension(state),
                fanout,
            )
            .await
        }
        "presence" => presence(data, ack, Extension(caller), Extension(state), fanout).await,
        "refreshToken" => crate::token::refresh(socket, data, ack, fanout).await,
        name => {
            if let Some(op) = COMMAND_EVENTS.iter().find(|op| op.as_str() == name) {
                let _ = ack.send(&submit(&fanout.0, &caller, *op, data.0).await);
            }
        }
    }
}

/// Validates and publishes one command, as HTTP does; returns the ack body.
async fn submit(fanout: &Fanout, caller: &Caller, op: Operation, body: Value) -> Value {
    if caller.expired() {
        return json!({"error": {"status": 401, "code": "token_expired"}});
    }
    let limits = &fanout.settings.limits;
    let envelope = match ingress::envelope(caller, op, body, CommandId::generate(), limits) {
        Ok(envelope) => envelope,
        Err(e) => return problem(&e),
    };
    match ingress::admit(
        &fanout.js,
        &fanout.subjects,
        &caller.user,
        &fanout.settings,
        &fanout.rate_leases,
    )
    .await
    {
        Ok(ingress::Admission::Allowed) => {}
        Ok(ingress::Admission::Limited { retry_after_secs }) => {
            return json!({"error": {"status": 429, "code": "rate_limited", "retryAfter": retry_after_secs}});
        }
        Err(e) => return json!({"error": {"status": 503, "code": "unavailable", "detail": e}}),
    }
    match ingress::publish(&fanout.js, &fanout.subjects, &envelope).await {
        Ok(()) => Value::Object(ingress::accepted_body(&envelope)),
        Err(e) => json!({"error": {"status": 503, "code": "unavailable", "detail": e}}),
    }
}

fn problem(e: &RequestError) -> Value {
    let (status, code, field) = match e {
        RequestError::UnknownOperation(_) => (404, "unknown_operation", None),
        RequestError::Malformed(_) => (400, "malformed", Some("body".to_string())),
        RequestError::Invalid { field, .. } => (422, "invalid", Some(field.clone())),
        RequestError::NotCaller { field, .. } => (403, "not_caller", Some(field.clone())),
        RequestError::Forbidden(_) => (403, "forbidden", None),
    };
    json!({"error": {"status": status, "code": code, "field": field, "detail": e.to_string()}})
}

/// `joinConversation` takes a conversation id, or `{conversationID, lastSeq}`.
pub(crate) fn parse_join(payload: &Value) -> Result<(ConversationId, Option<i64>), &'static str> {
    let (raw, last_seq) = match payload {
        Value::String(s) => (s.as_str(), None),
        Value::Object(map) => {
            let raw = map
                .get("conversationID")
                .and_then(Value::as_str)
                .ok_or("conversationID is required")?;
            let last_seq = match map.get("lastSeq") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_i64()
                        .filter(|s| *s >= 0)
                        .ok_or("lastSeq must be a whole number >= 0")?,
                ),
            };
            (raw, last_seq)
        }
        _ => return Err("send a conversation id or {conversationID, lastSeq}"),
    };
    Ok((
        ConversationId::parse(raw).map_err(|_| "conversationID must be a UUID")?,
        last_seq,
    ))
}

fn conversation_of(payload: &Value) -> Option<ConversationId> {
    parse_join(payload).ok().map(|(c, _)| c)
}

async fn leave_conversation(
    socket: SocketRef,
    Data(payload): Data<Value>,
    ack: AckSender,
    Extension(state): Extension<SocketState>,
    State(fanout): State<Arc<Fanout>>,
) {
    let Some(conversation) = conversation_of(&payload) else {
        let _ = ack.send(&json!({"left": false, "code": "invalid"}));
        return;
    };
    // Only a joined conversation has a feed to leave (so leaves stay bounded by joins).
    if state.left(conversation) {
        fanout.feeds.leave(conversation, socket.id);
    }
    let _ = ack.send(&json!({"left": true, "conversationID": conversation}));
}

/// `typing {conversationID, typing}`: relayed to the conversation's sockets on every replica,
/// never stored; at most one signal per socket per `typing_min_interval_ms` (the ack says
/// `{relayed}`).
async fn typing(
    socket: SocketRef,
    Data(payload): Data<Value>,
    ack: AckSender,
    Extension(caller): Extension<Caller>,
    Extension(state): Extension<SocketState>,
    State(fanout): State<Arc<Fanout>>,
) {
    let Some(conversation) = conversation_of(&payload) else {
        return;
    };
    let min_gap = Duration::from_millis(fanout.settings.fanout.typing_min_interval_ms);
    let mut allowed = match state.last_typing().lock() {
        Ok(mut last) => {
            let now = Instant::now();
            let ok = last.is_none_or(|at| now.duration_since(at) >= min_gap);
            if ok {
                *last = Some(now);
            }
            ok
        }
        Err(_) => false,
    };
    if allowed {
        let typing = payload["typing"].as_bool().unwrap_or(true);
        let command = FeedCommand::Typing(Box::new(TypingSignal {
            sid: socket.id,
            user: caller.user.clone(),
            typing,
        }));
        // Typing is best-effort: a feed whose queue is full drops it.
        allowed = fanout.feeds.command(conversation, command).is_ok();
    }
    // Optional for clients; says whether the signal went out or was rate-limited.
    let _ = ack.send(&json!({"relayed": allowed}));
}

/// `presence {conversationID}`: who of the conversation is online now, on every replica
/// (each replica's feed answers for its own sockets).
async fn presence(
    Data(payload): Data<Value>,
    ack: AckSender,
    Extension(caller): Extension<Caller>,
    Extension(state): Extension<SocketState>,
    State(fanout): State<Arc<Fanout>>,
) {
    let Some(conversation) = conversation_of(&payload) else {
        let _ = ack.send(&json!({"code": "invalid"}));
        return;
    };
    let limits = &fanout.settings.limits.fanout;
    if let Err(secs) = fanout.presence_rate.check(&caller.user) {
        let message = format!(
            "at most {} presence requests per {} s",
            limits.presence_per_window, limits.window_secs
        );
        let _ = ack.send(&json!({"code": "rate_limited", "message": message, "retryAfter": secs}));
        return;
    }
    // Joined = attached by the feed and not since removed by it: the feed, which sees
    // `participantRemoved` in order, takes the conversation out of the socket's set.
    if !state.is_joined(conversation) {
        let _ = ack.send(&json!({"code": "not_joined", "message": "only a member who joined the conversation may ask"}));
        return;
    }
    let inbox = fanout.nats.new_inbox();
    let mut online = HashSet::new();
    if let Ok(mut replies) = fanout.nats.subscribe(inbox.clone()).await {
        let subject = fanout.subjects.signal(conversation, "who");
        let _ = fanout
            .nats
            .publish_with_reply(subject, inbox, "{}".into())
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
        while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
            if let Ok(users) = serde_json::from_slice::<Vec<String>>(&reply.payload) {
                online.extend(users);
            }
        }
    }
    let mut online: Vec<String> = online.into_iter().collect();
    online.sort();
    let _ = ack.send(&json!({"conversationID": conversation, "online": online}));
}

async fn on_disconnect(
    socket: SocketRef,
    reason: DisconnectReason,
    Extension(state): Extension<SocketState>,
    State(fanout): State<Arc<Fanout>>,
) {
    tracing::debug!(sid = %socket.id, ?reason, "socket disconnected");
    metrics::gauge!("allo_sockets_connected").decrement(1.0);
    fanout.deadlines.forget(&socket, &state);
    let joined = state.all_joined();
    fanout.feeds.forget(socket.id, &joined);
    if let Some(slot) = socket.extensions.get::<Arc<SocketSlot>>() {
        slot.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "01934c5e-7d2a-7b3c-8d4e-5f6a7b8c9d0e";

    #[test]
    fn join_takes_an_id_or_an_object_with_a_last_seq() {
        let id = ConversationId::parse(C).unwrap();
        assert_eq!(parse_join(&json!(C)), Ok((id, None)));
        assert_eq!(parse_join(&json!({"conversationID": C})), Ok((id, None)));
        assert_eq!(
            parse_join(&json!({"conversationID": C, "lastSeq": null})),
            Ok((id, None))
        );
        assert_eq!(
            parse_join(&json!({"conversationID": C, "lastSeq": 7})),
            Ok((id, Some(7)))
        );
        assert_eq!(conversation_of(&json!({"conversationID": C})), Some(id));
    }

    #[test]
    fn join_refuses_what_it_cannot_resume_from() {
        for bad in [
            json!({"conversationID": C, "lastSeq": -1}),
            json!({"conversationID": C, "lastSeq": 1.5}),
            json!({"conversationID": C, "lastSeq": "3"}),
            json!({"conversationID": "not-a-uuid"}),
            json!({"lastSeq": 3}),
            json!(42),
            json!([C]),
        ] {
            assert!(parse_join(&bad).is_err(), "{bad}");
            assert_eq!(conversation_of(&bad), None, "{bad}");
        }
    }

    #[test]
    fn refusals_over_the_socket_carry_http_status_code_and_field() {
        let invalid = problem(&RequestError::Invalid {
            field: "message".into(),
            message: "must not be empty".into(),
        });
        assert_eq!(invalid["error"]["status"], 422);
        assert_eq!(invalid["error"]["code"], "invalid");
        assert_eq!(invalid["error"]["field"], "message");
        assert!(
            invalid["error"]["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
        let unknown = problem(&RequestError::UnknownOperation("nope".into()));
        assert_eq!(
            (&unknown["error"]["status"], &unknown["error"]["code"]),
            (&json!(404), &json!("unknown_operation"))
        );
        assert_eq!(
            problem(&RequestError::Forbidden("no".into()))["error"]["status"],
            403
        );
    }
}
