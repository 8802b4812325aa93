//! `POST /api/chat/{operation}`: authenticate, validate, publish to JetStream, answer 202 once
//! JetStream has stored the command (or, with `Prefer: wait=<s>`, the outcome).

use std::time::Duration;

use allo_common::command::{CommandOutcome, CommandStatus};
use allo_common::ids::CommandId;
use allo_common::ingress;
use allo_common::ops::{Operation, RequestError};
use allo_common::trace::{self, TraceContext};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::extract::{Path, Query};
use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    wait: Option<String>,
}

/// How long `?wait=true` waits when no number is given.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

#[tracing::instrument(skip_all, fields(operation = %operation, command_id, trace_id))]
pub async fn handler(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(operation): Path<String>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let limits = &state.settings.limits;
    let body = body.map_err(|_| ApiError::PayloadTooLarge {
        max: limits.body_max_bytes,
    })?;
    let wait = requested_wait(&headers, query.wait.as_deref(), limits.wait_max_secs)?;
    // A user holds at most `limits.waits_per_user` waits; past that the preference is not
    // applied and the answer is 202 at once.
    let wait_slot = wait.and_then(|_| state.admission.hold_wait(&caller.user));
    let wait = wait.filter(|_| wait_slot.is_some());
    let key = idempotency_key(&headers, limits.idempotency_key_max_chars)?;
    let command_id = match key {
        Some(key) => CommandId::from_idempotency_key(&caller.user, key),
        None => CommandId::generate(),
    };
    // Continue the caller's trace (W3C `traceparent`) or start one; the worker and the fan-out
    // continue it from the command's NATS headers.
    let trace = TraceContext::continue_or_start(
        headers
            .get(trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    let span = tracing::Span::current();
    span.record("command_id", tracing::field::display(command_id));
    span.record("trace_id", tracing::field::display(trace.trace_id()));
    let op = Operation::parse(&operation)
        .ok_or_else(|| RequestError::UnknownOperation(operation.clone()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let fingerprint = key.map(|_| ingress::fingerprint(command_id, op, &value));
    let mut envelope = ingress::envelope(&caller, op, value, command_id, limits)?;
    envelope.reply_outcome = wait.is_some();
    // A key names one request: the same key with another body is refused, never answered with
    // the first command's ids.
    if let Some(fingerprint) = fingerprint {
        match ingress::claim_idempotency_key(
            &state.js,
            &state.subjects,
            &state.settings,
            command_id,
            &fingerprint,
        )
        .await
        {
            Ok(ingress::KeyClaim::Proceed) => {}
            Ok(ingress::KeyClaim::Reused) => return Err(ApiError::IdempotencyKeyReused),
            Err(e) => return Err(ApiError::Unavailable(e)),
        }
    }
    // Subscribe before publishing so a fast worker's outcome cannot slip past us.
    let outcomes = match wait {
        Some(_) => Some(
            state
                .nats
                .subscribe(state.subjects.command_outcome(command_id))
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "subscribing to a command's outcome");
                    ApiError::Unavailable(ingress::UNAVAILABLE.into())
                })?,
        ),
        None => None,
    };
    match ingress::admit(
        &state.js,
        &state.subjects,
        &caller.user,
        &state.settings,
        &state.rate_leases,
    )
    .await
    {
        Ok(ingress::Admission::Allowed) => {}
        Ok(ingress::Admission::Limited { retry_after_secs }) => {
            return Err(ApiError::RateLimited { retry_after_secs });
        }
        Err(e) => return Err(ApiError::Unavailable(e)),
    }
    ingress::publish_traced(&state.js, &state.subjects, &envelope, &trace)
        .await
        .map_err(ApiError::Unavailable)?;
    tracing::debug!(target: trace::TARGET, traceparent = %trace.header(), "command accepted");
    metrics::counter!("allo_commands_accepted_total", "operation" => op.as_str()).increment(1);
    let accepted = ingress::accepted_body(&envelope);
    if let (Some(wait), Some(mut outcomes)) = (wait, outcomes) {
        // A retried command that was applied long ago produces no new outcome message.
        let outcome = match command_get::stored_outcome(&state, command_id).await {
            Some(outcome) => Some(outcome),
            None => match tokio::time::timeout(wait, outcomes.next()).await {
                Ok(Some(msg)) => serde_json::from_slice::<CommandOutcome>(&msg.payload).ok(),
                _ => command_get::stored_outcome(&state, command_id).await,
            },
        };
        if let Some(outcome) = outcome {
            return outcome_response(envelope.command.operation(), outcome, accepted);
        }
    }
    Ok(accepted_response(command_id, accepted))
}

use super::command_get;

/// A waited-for outcome: 201/200 with the result, or the rejection as problem+json.
fn outcome_response(
    op: Operation,
    outcome: CommandOutcome,
    mut body: serde_json::Map<String, serde_json::Value>,
) -> Result<Response, ApiError> {
    match outcome.status {
        CommandStatus::Rejected => Err(ApiError::Domain {
            code: outcome
                .code
                .unwrap_or(allo_common::error::ErrorCode::Invalid),
            message: outcome.message.unwrap_or_default(),
            command_id: Some(outcome.command_id.to_string()),
        }),
        status => {
            body.insert("status".into(), json!(status));
            if let Some(result) = outcome.result {
                body.insert("result".into(), result);
            }
            let code = if op.creates() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((code, axum::Json(body)).into_response())
        }
    }
}

fn accepted_response(
    command_id: CommandId,
    body: serde_json::Map<String, serde_json::Value>,
) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/commands/{command_id}"))],
        axum::Json(body),
    )
        .into_response()
}

/// `Prefer: wait=<seconds>` (RFC 7240) or `?wait=<seconds|true>`, capped by config. The header
/// wins when both are given, but both are checked: an invalid value is refused, never ignored.
fn requested_wait(
    headers: &HeaderMap,
    query: Option<&str>,
    max_secs: u64,
) -> Result<Option<Duration>, ApiError> {
    let from_query = query.map(parse_wait).transpose()?;
    let from_header = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|pref| pref.trim().strip_prefix("wait="))
        .map(parse_wait)
        .transpose()?;
    let wait = from_header.or(from_query).flatten();
    Ok(wait.map(|w| w.min(Duration::from_secs(max_secs))))
}

/// One wait value: seconds, `true` (the default wait) or `false`/`0` (no wait).
fn parse_wait(raw: &str) -> Result<Option<Duration>, ApiError> {
    match raw.trim() {
        "true" => Ok(Some(DEFAULT_WAIT)),
        "false" | "0" => Ok(None),
        secs => secs
            .parse::<u64>()
            .map(|s| Some(Duration::from_secs(s)))
            .map_err(|_| {
                ApiError::bad_parameter("wait", "must be a whole number of seconds or `true`")
            }),
    }
}

/// The `Idempotency-Key` header: printable ASCII, bounded.
fn idempotency_key(headers: &HeaderMap, max_chars: usize) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= max_chars && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_parameter(
                "Idempotency-Key",
                format!("must be 1-{max_chars} printable ASCII characters without spaces"),
            )
        })?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn wait_preferences() {
        assert_eq!(requested_wait(&headers(&[]), None, 30).unwrap(), None);
        assert_eq!(
            requested_wait(&headers(&[("prefer", "respond-async, wait=5")]), None, 30).unwrap(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            requested_wait(&headers(&[("prefer", "wait=500")]), None, 30).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            requested_wait(&headers(&[]), Some("true"), 30).unwrap(),
            Some(DEFAULT_WAIT)
        );
        assert!(requested_wait(&headers(&[("prefer", "wait=soon")]), None, 30).is_err());
        // The header wins, but an invalid query value is not ignored behind it.
        assert!(requested_wait(&headers(&[("prefer", "wait=5")]), Some(""), 30).is_err());
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert_eq!(
            idempotency_key(&headers(&[("idempotency-key", "abc-1")]), 10).unwrap(),
            Some("abc-1")
        );
        assert!(idempotency_key(&headers(&[("idempotency-key", "a b")]), 10).is_err());
        assert!(
            idempotency_key(
                &headers(&[("idempotency-key", "x".repeat(11).as_str())]),
                10
            )
            .is_err()
        );
    }
}
