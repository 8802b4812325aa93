//! The ingress path shared by HTTP (`allo-api`) and Socket.IO (`allo-fanout`): a validated
//! command becomes an envelope, is published to the command stream with `Nats-Msg-Id` =
//! commandId, and answers with the ids it was given.

use async_nats::jetstream::{self, message::PublishMessage};

use crate::auth::Caller;
use crate::command::{CommandEnvelope, CommandStatus};
use crate::config::Limits;
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

/// `{commandId, status: "accepted", ...assigned ids}`.
pub fn accepted_body(envelope: &CommandEnvelope) -> serde_json::Map<String, serde_json::Value> {
    let mut body = envelope.command.assigned_ids();
    body.insert("commandId".into(), envelope.command_id.to_string().into());
    body.insert("status".into(), serde_json::json!(CommandStatus::Accepted));
    body
}
