//! `/healthz` (the process answers; also on the public port) and, on the admin listener only,
//! `/readyz` (NATS and Postgres are reachable) and `/metrics`.

use async_nats::connection::State as NatsState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Prometheus text format.
pub async fn metrics() -> String {
    allo_common::telemetry::metrics().render()
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let nats = state.nats.connection_state() == NatsState::Connected;
    let postgres = sqlx::query("SELECT 1").execute(&state.db).await.is_ok();
    let status = if nats && postgres {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // The prefix tells which deployment answered (several can share a host).
    let prefix = state.subjects.prefix();
    (
        status,
        Json(json!({"nats": nats, "postgres": postgres, "prefix": prefix})),
    )
}
