//! Routes, one file each.

mod command_get;
mod command_post;
mod conversation_get;
mod conversation_list;
mod dead_letters;
pub(crate) mod dev_token;
mod event_list;
mod extract;
mod health;
mod message_get;
mod message_list;
mod openapi;
mod pin_list;
mod poll_get;
mod report_list;
mod scheduled_list;

use allo_common::error::ErrorCode;
use allo_common::ids::{ConversationId, UserId};
use axum::Router;
use axum::routing::{get, post};
use sqlx::PgPool;

use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/chat/{operation}", post(command_post::handler))
        .route("/api/commands/{id}", get(command_get::handler))
        .route("/api/conversations", get(conversation_list::handler))
        .route("/api/conversations/{id}", get(conversation_get::handler))
        .route(
            "/api/conversations/{id}/messages",
            get(message_list::handler),
        )
        .route(
            "/api/conversations/{id}/messages/{message_id}",
            get(message_get::handler),
        )
        .route("/api/conversations/{id}/pins", get(pin_list::handler))
        .route("/api/conversations/{id}/events", get(event_list::handler))
        .route("/api/openapi.json", get(openapi::handler))
        .route(
            "/api/conversations/{id}/polls/{message_id}",
            get(poll_get::handler),
        )
        .route("/api/scheduled", get(scheduled_list::handler))
        .route("/api/moderation/reports", get(report_list::handler))
        .route("/healthz", get(health::healthz))
}

/// The operators' listener (`api_admin_addr`): metrics and readiness, which name internals
/// (subject prefix, dependency state) that clients have no business reading, and the
/// dead-letter routes (bearer token with role `admin`).
pub fn admin_router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        // Dead letters hold users' commands: operators only, never on the client port.
        .route("/admin/dead-letters", get(dead_letters::list))
        .route("/admin/dead-letters/{id}", get(dead_letters::show))
        .route(
            "/admin/dead-letters/{id}/replay",
            post(dead_letters::replay),
        )
        .route(
            "/admin/dead-letters/{id}/discard",
            post(dead_letters::discard),
        )
}

/// Reads are for participants: 404 if the conversation does not exist, 403 if the caller is
/// not (or no longer) in it. Returns the first seq the caller may read (their history floor:
/// 0, or their join's seq in a conversation whose history visibility is `joined`).
pub(crate) async fn require_participant(
    db: &PgPool,
    conversation: ConversationId,
    user: &UserId,
) -> Result<i64, ApiError> {
    let row: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT history_floor($1, $2) FROM conversations WHERE id = $1")
            .bind(conversation)
            .bind(user.as_str())
            .fetch_optional(db)
            .await?;
    match row {
        None => Err(ApiError::NotFound("conversation not found".into())),
        Some((None,)) => Err(ApiError::domain(
            ErrorCode::NotParticipant,
            "you are not a participant of this conversation",
        )),
        Some((Some(floor),)) => Ok(floor),
    }
}

/// Parses `/conversations/{id}/.../{messageId}` path ids, naming the one at fault.
pub(crate) fn message_path(
    (id, message): (String, String),
) -> Result<(ConversationId, allo_common::ids::MessageId), ApiError> {
    Ok((
        path_id(&id, ConversationId::parse)?,
        allo_common::ids::MessageId::parse(&message)
            .map_err(|m| ApiError::bad_parameter("messageId", m))?,
    ))
}

/// Parses a path id, naming the parameter on failure.
pub(crate) fn path_id<T>(raw: &str, parse: fn(&str) -> Result<T, String>) -> Result<T, ApiError> {
    parse(raw).map_err(|m| ApiError::bad_parameter("id", m))
}
