//! `POST /api/dev/token {userId, moderator?}`: mints a bearer token for the web console's dev
//! sign-in. Registered only in dev mode (which accepts the public dev secret and listens on
//! loopback only); outside it the route does not exist and answers 404 like any unknown path.

use allo_common::ids::UserId;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// A console session lasts an hour; the page refreshes the token when the fan-out warns.
const TTL_MINUTES: i64 = 60;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body {
    user_id: String,
    #[serde(default)]
    moderator: bool,
}

pub async fn handler(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: Body = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_parameter("body", e.to_string()))?;
    let user = UserId::parse(&body.user_id).map_err(|e| ApiError::bad_parameter("userId", e))?;
    let roles: Vec<String> = if body.moderator {
        vec!["moderator".into()]
    } else {
        Vec::new()
    };
    let ttl = chrono::Duration::minutes(TTL_MINUTES);
    let token = state
        .keys
        .mint(&user, &roles, ttl)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let expires_at = chrono::Utc::now() + ttl;
    Ok(Json(
        json!({"token": token, "userId": user.as_str(), "roles": roles, "expiresAt": expires_at}),
    ))
}
