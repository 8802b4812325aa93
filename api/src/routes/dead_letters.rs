//! `/admin/dead-letters` on the API's admin listener: the operators' dead-letter routes (a
//! token with role `admin` as well; they hold users' commands): list (`?limit=`), show, replay
//! once under a new command id (again: 200 with the same id), discard. Same code as
//! `allo-workers dead-letters` (`allo_common::dead_letters`).

use allo_common::dead_letters::{self as dl, ADMIN_ROLE, DeadLetterError};
use allo_common::error::ErrorCode;
use allo_common::ingress::UNAVAILABLE;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::extract::{Path, Query};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

fn admin_only(caller: &allo_common::auth::Caller) -> Result<(), ApiError> {
    if caller.has_role(ADMIN_ROLE) {
        Ok(())
    } else {
        Err(ApiError::domain(
            ErrorCode::Forbidden,
            "dead letters are for operators (role admin)",
        ))
    }
}

fn command_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad_parameter("commandId", "must be a UUID"))
}

fn to_api(e: DeadLetterError) -> ApiError {
    match e {
        DeadLetterError::NotFound(_) => ApiError::NotFound(e.to_string()),
        DeadLetterError::NotReplayable(..) | DeadLetterError::AlreadyApplied(_) => {
            ApiError::domain(ErrorCode::Conflict, e.to_string())
        }
        DeadLetterError::Database(e) => e.into(),
        DeadLetterError::Publish(detail) => {
            tracing::warn!(%detail, "replaying a dead letter");
            ApiError::Unavailable(UNAVAILABLE.into())
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let max = state.settings.limits.history_page_max;
    let limit = query.limit.unwrap_or(max);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_parameter("limit", format!("must be 1-{max}")));
    }
    let rows = dl::list(&state.db, limit).await.map_err(to_api)?;
    Ok(Json(Value::Array(rows)))
}

pub async fn show(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let id = command_id(&id)?;
    Ok(Json(dl::show(&state.db, id).await.map_err(to_api)?))
}

pub async fn replay(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let id = command_id(&id)?;
    let done = dl::replay(&state.db, &state.js, &state.subjects, id)
        .await
        .map_err(to_api)?;
    tracing::info!(command_id = %id, replayed_as = %done["replayedAs"], by = %caller.user, "dead letter replayed");
    Ok(Json(done))
}

pub async fn discard(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin_only(&caller)?;
    let id = command_id(&id)?;
    let done = dl::discard(&state.db, id).await.map_err(to_api)?;
    tracing::info!(command_id = %id, by = %caller.user, "dead letter discarded");
    Ok(Json(done))
}
