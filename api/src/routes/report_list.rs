//! `GET /api/moderation/reports?status=open`: the moderation queue (role `moderator` only),
//! oldest first, each report with the reporter, reason, details and the message as it was
//! when reported.

use allo_common::error::ErrorCode;
use allo_common::ops::reports::MODERATOR_ROLE;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;

use super::extract::Query;
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct ReportsQuery {
    status: Option<String>,
}

pub async fn handler(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(query): Query<ReportsQuery>,
) -> Result<Json<Value>, ApiError> {
    if !caller.has_role(MODERATOR_ROLE) {
        return Err(ApiError::domain(
            ErrorCode::Forbidden,
            "the moderation queue is for moderators",
        ));
    }
    let status = query.status.unwrap_or_else(|| "open".into());
    if !matches!(status.as_str(), "open" | "dismissed" | "removed") {
        return Err(ApiError::bad_parameter(
            "status",
            "must be open, dismissed or removed",
        ));
    }
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'reportId', r.id, 'messageId', r.message_id, 'conversationID', r.conversation_id,
            'reporter', r.reporter_id, 'reason', r.reason, 'details', r.details, 'status', r.status,
            'reportedAt', r.created_at, 'resolvedBy', r.resolved_by, 'resolvedAt', r.resolved_at,
            'messageAtReport', r.snapshot, 'hidden', m.hidden_at IS NOT NULL)
         FROM reports r JOIN messages m ON m.id = r.message_id
         WHERE r.status = $1 ORDER BY r.created_at LIMIT $2",
    )
    .bind(&status)
    .bind(state.settings.limits.history_page_max)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(Value::Array(rows)))
}
