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
    })
}

/// Publishes a command and waits for JetStream's acknowledgement. A repeat inside the duplicate
/// window is dropped by NATS; a later one by the worker's `commands` key.
pub async fn publish(
    js: &jetstream::Context,
    subjects: &Subjects,
    envelope: &CommandEnvelope,
) -> Result<(), String> {
    let subject = subjects.command(envelope.command.operation(), envelope.command_id);
    let payload = serde_json::to_vec(envelope).map_err(|e| e.to_string())?;
    let message = PublishMessage::build()
        .message_id(envelope.command_id.to_string())
        .payload(payload.into());
    js.send_publish(subject, message)
        .await
        .map_err(|e| format!("command not accepted: {e}"))?
        .await
        .map_err(|e| format!("command not accepted: {e}"))?;
    Ok(())
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

/// Counts one command against the user's budget for the current window, shared by every
/// ingress replica through the rate stream. Recreates the stream if it is gone (a NATS that lost
/// its store), so ingress heals itself instead of refusing forever.
pub async fn admit(
    js: &jetstream::Context,
    subjects: &Subjects,
    user: &crate::ids::UserId,
    settings: &Settings,
) -> Result<Admission, String> {
    let window_secs = settings.limits.rate_window_secs.max(1);
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let window = now / window_secs;
    for attempt in 0..2 {
        let ack = js
            .publish(subjects.rate(user, window), bytes::Bytes::new())
            .await
            .map_err(|e| format!("rate check: {e}"))?
            .await;
        match ack {
            Ok(_) => return Ok(Admission::Allowed),
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
                    .map_err(|e| format!("rate stream: {e}"))?;
            }
            Err(e) => return Err(format!("rate check: {e}")),
        }
    }
    Err("rate check: the rate stream is unavailable".into())
}

fn is_per_subject_limit(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|js| js.error_code() == PER_SUBJECT_LIMIT)
}

/// `{commandId, status: "accepted", ...assigned ids}`.
pub fn accepted_body(envelope: &CommandEnvelope) -> serde_json::Map<String, serde_json::Value> {
    let mut body = envelope.command.assigned_ids();
    body.insert("commandId".into(), envelope.command_id.to_string().into());
    body.insert("status".into(), serde_json::json!(CommandStatus::Accepted));
    body
}
