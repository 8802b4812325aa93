//! Allo's HTTP ingress. Stateless: commands go to JetStream, reads come from Postgres, and
//! nothing is kept in memory that another replica would need.
//!
//! # Layout
//! - [`routes`]: one file per route, `<resource>_<verb>.rs`.
//! - [`auth`]: the bearer-token extractor.
//! - [`error`]: the one HTTP error type (problem+json).
//! - [`console`]: the web console's embedded static files and its `config.json`.

pub mod admission;
pub mod auth;
pub mod console;
pub mod error;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use allo_common::Settings;
use allo_common::auth::TokenKeys;
use allo_common::subjects::Subjects;
use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method};
use sqlx::PgPool;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: PgPool,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    pub keys: TokenKeys,
    /// Rate-budget tokens this replica leased and has not spent (shared by its requests).
    pub rate_leases: Arc<allo_common::ingress::RateLeases>,
    /// In-flight cap, request timeout and held waits per user.
    pub admission: Arc<admission::Admission>,
}

impl AppState {
    /// Connects lazily to Postgres (ingress keeps accepting commands while it is down).
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        // First: a service that would accept forged tokens must not even connect.
        let keys = TokenKeys::from_settings(&settings)?;
        console::check(&settings)?;
        let admission = Arc::new(admission::Admission::new(&settings.limits));
        let db = allo_common::db::connect_lazy(&settings).context("database URL")?;
        let nats = allo_common::jetstream::connect(&settings, "allo-api")
            .await
            .context("connecting to NATS")?;
        let mut js = async_nats::jetstream::new(nats.clone());
        // A publish not acknowledged by then is reported as 503, not left hanging.
        js.set_timeout(Duration::from_secs(5));
        allo_common::jetstream::provision(
            &js,
            &settings,
            allo_common::jetstream::Provision::Streams,
        )
        .await?;
        Ok(Self {
            subjects: Subjects::of(&settings),
            keys,
            settings: Arc::new(settings),
            db,
            nats,
            js,
            rate_leases: Arc::default(),
            admission,
        })
    }
}

/// The full router, with body limit, CORS and request tracing.
pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.settings.cors_origins);
    let body_limit = state.settings.limits.body_max_bytes;
    let admission = state.admission.clone();
    let mut routes = routes::router().merge(console::router());
    // Minting tokens is a dev tool: outside dev mode the route does not exist (404).
    if state.settings.environment == allo_common::config::Environment::Dev {
        routes = routes.route(
            "/api/dev/token",
            axum::routing::post(routes::dev_token::handler),
        );
    }
    routes
        .layer(axum::middleware::from_fn_with_state(
            admission,
            admission::admit,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(cors)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("prefer"),
        ])
}

/// Metrics and readiness, for operators only (bound to `api_admin_addr`).
pub fn admin_router(state: AppState) -> Router {
    routes::admin_router().with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = settings.api_addr;
    let settings_admin_addr = settings.api_admin_addr;
    allo_common::telemetry::metrics();
    let state = AppState::connect(settings).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let admin = tokio::net::TcpListener::bind(settings_admin_addr)
        .await
        .with_context(|| format!("binding {settings_admin_addr}"))?;
    tokio::spawn(axum::serve(admin, admin_router(state.clone())).into_future());
    tracing::info!(%addr, admin = %settings_admin_addr, "allo-api listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
