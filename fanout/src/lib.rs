//! Allo's Socket.IO fan-out. Each process subscribes in NATS only to the conversations its
//! sockets joined (subscribe on first join, unsubscribe on last leave) and to the user-addressed
//! subjects, and emits what arrives to its local rooms. Replicas need no shared adapter.
//!
//! # Layout
//! - [`state`]: the shared state (config, Postgres, NATS, the per-user bounds).
//! - [`socket`]: the handshake (token check, sockets per user) and the client events;
//!   [`socket_state`]: what a socket holds.
//! - [`join`]: `joinConversation` (bounds, membership check, replay, attach).
//! - [`registry`]: the process's feeds, reached without waiting on any of them; `inbox`: what
//!   socket handlers queue for a feed.
//! - [`feed`]: one conversation's feed (ordering, gap fill, delivery, membership at its seq);
//!   [`feed_join`]: its joins and leaves; [`feed_signal`]: its typing/presence signals.
//! - [`replay`]: reading the event log for a resuming socket; cutting off a slow socket.
//! - [`limits`]: sockets per user and per-user request windows.
//! - [`token`]: token expiry and refresh.

pub mod feed;
pub mod feed_join;
pub mod feed_signal;
mod inbox;
pub mod join;
pub mod limits;
pub mod registry;
pub mod replay;
pub mod socket;
pub mod socket_state;
pub mod state;
pub mod token;

use std::sync::Arc;

use allo_common::Settings;
use anyhow::Context;
use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use socketioxide::SocketIo;

use crate::state::Fanout;

/// Time given to queued disconnect packets at shutdown.
const SOCKET_DRAIN: std::time::Duration = std::time::Duration::from_millis(300);
/// Initial size of each websocket's read buffer (see `serve`).
const WS_READ_BUFFER: usize = 128;

/// Connects, serves Socket.IO and health routes on `fanout_addr` until `shutdown`.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // First: a service that would accept forged tokens must not even connect.
    let keys = allo_common::auth::TokenKeys::from_settings(&settings)?;
    let addr = settings.fanout_addr;
    allo_common::telemetry::metrics();
    let db = allo_common::db::connect_lazy(&settings).context("database URL")?;
    let nats = allo_common::jetstream::connect(&settings, "allo-fanout")
        .await
        .context("connecting to NATS")?;
    allo_common::jetstream::provision(
        &async_nats::jetstream::new(nats.clone()),
        &settings,
        allo_common::jetstream::Provision::Streams,
    )
    .await?;
    let socket_buffer = settings.fanout.socket_buffer;
    let (ping_interval_ms, ping_timeout_ms) = (
        settings.fanout.ping_interval_ms,
        settings.fanout.ping_timeout_ms,
    );
    let admin_addr = settings.fanout_admin_addr;
    let fanout = Arc::new(Fanout::new(settings, keys, db, nats));
    let (layer, io) = SocketIo::builder()
        // A socket that cannot take this many queued packets is disconnected, not buffered
        // without bound.
        .max_buffer_size(socket_buffer)
        // Engine.IO frames from clients are small (events, acks, pongs); the websocket's read
        // buffer is allocated at this size for every socket (the default, 4 KB, was a tenth of a
        // socket's cost) and grows only for a larger frame.
        .ws_read_buffer_size(WS_READ_BUFFER)
        // Socket.IO's defaults (25 s, 20 s) unless configured (bounds in `Settings::validate`);
        // the heartbeat runs in each socket's writer task on a coarse grid
        // (vendor/engineioxide/ALLO-PATCH.md).
        .ping_interval(std::time::Duration::from_millis(ping_interval_ms))
        .ping_timeout(std::time::Duration::from_millis(ping_timeout_ms))
        .with_state(fanout.clone())
        .build_layer();
    io.ns("/", socket::on_connect.with(socket::authenticate));
    fanout
        .deadlines
        .clone()
        .spawn(io.clone(), fanout.settings.auth.refresh_notice_secs);
    fanout.spawn_user_relay(io.clone()).await?;
    fanout.spawn_moderator_relay(io.clone()).await?;
    // Operators' listener: readiness and metrics name internals clients need not read.
    let admin = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("binding {admin_addr}"))?;
    let admin_app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|| async { allo_common::telemetry::metrics().render() }),
        )
        .with_state(fanout.clone());
    tokio::spawn(axum::serve(admin, admin_app).into_future());
    let app = Router::new()
        .route("/healthz", get(healthz))
        .with_state(fanout)
        .layer(layer)
        .layer(axum::middleware::map_request(own_request_head));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, admin = %admin_addr, "allo-fanout listening");
    // Close every socket first (clients see a server disconnect and reconnect elsewhere);
    // upgraded websockets are not part of axum's graceful shutdown.
    let closing = async move {
        shutdown.await;
        tracing::info!("shutting down: closing sockets");
        // A Socket.IO disconnect packet tells clients the server closed them on purpose
        // ("io server disconnect"); give the transport tasks time to write it, then close.
        if let Err(e) = io.disconnect().await {
            tracing::warn!(error = %e, "disconnecting sockets");
        }
        tokio::time::sleep(SOCKET_DRAIN).await;
        io.close().await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(closing)
        .await?;
    tracing::info!("allo-fanout stopped");
    Ok(())
}

use socketioxide::handler::ConnectHandler;

/// The request headers Engine.IO reads: the websocket handshake's key and a polling POST's
/// content type. Nothing in this service reads any other.
const HEADERS_READ: [axum::http::HeaderName; 2] = [
    axum::http::header::SEC_WEBSOCKET_KEY,
    axum::http::header::CONTENT_TYPE,
];

/// Gives the request its own copy of its URI and of the headers Engine.IO reads, and drops
/// the others.
///
/// Engine.IO keeps every socket's request head for the socket's whole life. As hyper parses a
/// request, the URI and each header value are slices of the connection's read buffer (8-16 KB),
/// and so is axum's `OriginalUri` extension: keeping them kept that whole buffer per socket,
/// idle or not (16 KB of a socket's ~60 KB, measured with heaptrack; bench/README.md). Copied
/// out, the buffer is freed after the upgrade; the headers nobody reads (user agent, origin,
/// cookies...) are not kept at all. Other extensions stay as they are (hyper's upgrade handle is
/// one of them).
async fn own_request_head(request: axum::extract::Request) -> axum::extract::Request {
    let (mut parts, body) = request.into_parts();
    let mut headers = axum::http::HeaderMap::new();
    for name in HEADERS_READ {
        if let Some(value) = parts.headers.get(&name) {
            let value = axum::http::HeaderValue::from_bytes(value.as_bytes())
                .unwrap_or_else(|_| value.clone());
            headers.insert(name, value);
        }
    }
    parts.headers = headers;
    if let Ok(uri) = axum::http::Uri::try_from(parts.uri.to_string()) {
        // The router's copy for handlers, a slice of the same buffer, goes the same way.
        if parts.extensions.get::<OriginalUri>().is_some() {
            parts.extensions.insert(OriginalUri(uri.clone()));
        }
        parts.uri = uri;
    }
    axum::extract::Request::from_parts(parts, body)
}

async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(fanout): State<Arc<Fanout>>) -> (StatusCode, axum::Json<Value>) {
    let (nats, postgres) = fanout.readiness().await;
    let status = if nats && postgres {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({"nats": nats, "postgres": postgres, "prefix": fanout.subjects.prefix()})),
    )
}
