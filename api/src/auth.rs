//! The bearer-token extractor: a handler that takes [`Authenticated`] cannot run for an
//! unauthenticated request.

use allo_common::auth::Caller;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::AppState;
use crate::error::ApiError;

pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        state
            .keys
            .verify_header(header)
            .map(Authenticated)
            .map_err(ApiError::Unauthorized)
    }
}
