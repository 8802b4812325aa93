//! `GET /api/commands/{id}`: a command's status for the user who sent it. `committed` and
//! `rejected` come from Postgres; a command still in the stream is `accepted`. A replayed dead
//! letter shows `replayedAs` (the new id), its replay `replayOf` (the old one).

use allo_common::command::{
    CommandEnvelope, CommandOutcome, CommandStatus, load_outcome, replay_of,
};
use allo_common::ids::CommandId;
use axum::Json;
use axum::extract::State;

use super::extract::Path;
use super::path_id;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

pub async fn handler(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<CommandOutcome>, ApiError> {
    let id = path_id(&id, CommandId::parse)?;
    let not_found = || ApiError::NotFound("no such command".into());
    if let Some((actor, outcome)) = load(&state, id).await? {
        // Someone else's command does not exist, as far as this caller can tell.
        return if actor == caller.user.as_str() {
            Ok(Json(outcome))
        } else {
            Err(not_found())
        };
    }
    let Some(pending) = pending(&state, id).await else {
        // It may have been applied between the two looks.
        return match load(&state, id).await? {
            Some((actor, outcome)) if actor == caller.user.as_str() => Ok(Json(outcome)),
            _ => Err(not_found()),
        };
    };
    if pending.actor != caller.user {
        return Err(not_found());
    }
    Ok(Json(CommandOutcome {
        command_id: id,
        operation: pending.command.operation().as_str().to_string(),
        status: CommandStatus::Accepted,
        code: None,
        message: None,
        result: None,
        replay_of: replay_of(&state.db, id).await?,
        replayed_as: None,
    }))
}

async fn load(
    state: &AppState,
    id: CommandId,
) -> Result<Option<(String, CommandOutcome)>, ApiError> {
    let stored = load_outcome(&state.db, id).await?;
    Ok(stored.map(|(actor, outcome)| (actor.as_str().to_string(), outcome)))
}

/// The recorded outcome, if the command was applied (used by `Prefer: wait`).
pub async fn stored_outcome(state: &AppState, id: CommandId) -> Option<CommandOutcome> {
    load(state, id)
        .await
        .ok()
        .flatten()
        .map(|(_, outcome)| outcome)
}

/// The command, if it is still in the command stream waiting for a worker. Its subject ends
/// with its id, so one lookup by subject finds it.
async fn pending(state: &AppState, id: CommandId) -> Option<CommandEnvelope> {
    let stream = state
        .js
        .get_stream(state.subjects.command_stream())
        .await
        .ok()?;
    let subject = state.subjects.any_command(id);
    let message = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .ok()?;
    serde_json::from_slice(&message.payload).ok()
}
