//! The bearer-token extractor: a handler that takes [`Authenticated`] cannot run for an
//! unauthenticated request. Reads (GET) also spend the caller's read budget here, the first
//! point where the user is known.

use allo_common::auth::Caller;
use axum::extract::FromRequestParts;
use axum::http::Method;
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
        let caller = state
            .keys
            .verify_header(header)
            .map_err(ApiError::Unauthorized)?;
        if parts.method == Method::GET {
            state
                .admission
                .take_read(&caller.user)
                .map_err(|retry_after_secs| {
                    metrics::counter!("allo_reads_limited_total").increment(1);
                    ApiError::RateLimited { retry_after_secs }
                })?;
        }
        Ok(Authenticated(caller))
    }
}
