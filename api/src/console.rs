//! The web console (`/console/`): static ES modules compiled into the binary, so a deployment
//! carries no asset directory that could go missing or drift from the code, plus
//! `/console/config.json`, which tells the page where the fan-out's Socket.IO endpoint is.
//!
//! The page needs no relaxation of auth: it signs in with a bearer token like any client (the
//! dev-only `/api/dev/token` route mints one in dev mode), calls this API same-origin and
//! connects to the fan-out with `auth: {token}`. Every response carries a strict
//! Content-Security-Policy: scripts and styles from this origin only, no inline code, and
//! network access to this origin and the fan-out alone.

use allo_common::Settings;
use allo_common::config::Environment;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;

use crate::AppState;

/// (file name, content type, bytes) of every asset; anything else under `/console/` is 404.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("index.html", HTML, include_bytes!("../console/index.html")),
    ("style.css", CSS, include_bytes!("../console/style.css")),
    ("app.js", JS, include_bytes!("../console/app.js")),
    ("api.js", JS, include_bytes!("../console/api.js")),
    ("live.js", JS, include_bytes!("../console/live.js")),
    ("view.js", JS, include_bytes!("../console/view.js")),
    ("dialogs.js", JS, include_bytes!("../console/dialogs.js")),
    (
        "vendor/socket.io.esm.min.js",
        JS,
        include_bytes!("../console/vendor/socket.io.esm.min.js"),
    ),
    (
        "vendor/socket.io-client.LICENSE",
        TEXT,
        include_bytes!("../console/vendor/socket.io-client.LICENSE"),
    ),
];
const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The console's routes (served in every environment: the page itself holds no secret).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(index))
        .route("/console/config.json", get(config))
        .route("/console/{*file}", get(asset))
}

/// Refuses a `console_fanout_url` that is not an absolute http(s) URL, at start.
pub fn check(settings: &Settings) -> anyhow::Result<()> {
    if let Some(url) = &settings.console_fanout_url {
        let origin = origin_of(url);
        anyhow::ensure!(
            origin.is_some(),
            "console_fanout_url must be an absolute http(s) URL without a path, got {url:?}"
        );
    }
    Ok(())
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve("index.html", &state.settings, &headers)
}

async fn asset(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve(&file, &state.settings, &headers)
}

/// What the page cannot know by itself: the fan-out's URL and whether dev sign-in exists.
async fn config(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let fanout = fanout_url(&state.settings, &headers);
    let dev = state.settings.environment == Environment::Dev;
    let body = json!({"fanoutUrl": fanout, "devSignIn": dev}).to_string();
    with_headers(body.into_bytes(), "application/json", &fanout)
}

fn serve(file: &str, settings: &Settings, headers: &HeaderMap) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => {
            with_headers(bytes.to_vec(), content_type, &fanout_url(settings, headers))
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

fn with_headers(body: Vec<u8>, content_type: &str, fanout: &str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(h, header::CONTENT_TYPE, content_type);
    set(h, header::CONTENT_SECURITY_POLICY, &csp(fanout));
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    // Assets change with the binary; revalidating is cheap next to a stale page after a deploy.
    set(h, header::CACHE_CONTROL, "no-cache");
    response
}

/// Only this origin's scripts and styles; fetches to this origin and the fan-out (its HTTP
/// long-polling and WebSocket forms); no framing, no plugins, no inline code.
fn csp(fanout: &str) -> String {
    let ws = fanout.replacen("http", "ws", 1);
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' {fanout} {ws}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// The configured public URL, else the host the browser used for this page on the fan-out's
/// port (a dev stack on `localhost:5000` has its fan-out on `localhost:5001`).
fn fanout_url(settings: &Settings, headers: &HeaderMap) -> String {
    if let Some(origin) = settings.console_fanout_url.as_deref().and_then(origin_of) {
        return origin;
    }
    let port = settings.fanout_addr.port();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(hostname)
        .unwrap_or_else(|| match settings.fanout_addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
    format!("http://{host}:{port}")
}

/// The host part of a `Host` header (no port), if it is a plain host name or IP literal:
/// it goes into a header and a JSON body, so nothing else passes.
fn hostname(host: &str) -> Option<String> {
    let name = if host.starts_with('[') {
        &host[..=host.find(']')?]
    } else {
        host.split(':').next()?
    };
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    plain.then(|| name.to_string())
}

/// `scheme://host[:port]` of an absolute http(s) URL without path, query or credentials.
fn origin_of(url: &str) -> Option<String> {
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let plain = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    plain.then(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_url_follows_the_pages_host_unless_configured() {
        let mut settings = Settings::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("localhost:5000"));
        assert_eq!(fanout_url(&settings, &headers), "http://localhost:5001");
        headers.insert(header::HOST, HeaderValue::from_static("[::1]:5000"));
        assert_eq!(fanout_url(&settings, &headers), "http://[::1]:5001");
        headers.insert(header::HOST, HeaderValue::from_static("evil\"; x"));
        assert_eq!(fanout_url(&settings, &headers), "http://127.0.0.1:5001");
        settings.console_fanout_url = Some("https://chat.example.com/".into());
        assert_eq!(fanout_url(&settings, &headers), "https://chat.example.com");
        assert!(csp("https://chat.example.com").contains("wss://chat.example.com"));
    }

    #[test]
    fn only_plain_http_origins_are_accepted() {
        assert!(origin_of("http://10.0.0.1:5001").is_some());
        assert!(origin_of("ftp://x").is_none());
        assert!(origin_of("https://a.example/path").is_none());
        assert!(origin_of("https://u:p@a.example").is_none());
    }
}
