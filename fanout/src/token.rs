//! A socket lives as long as its token, not longer. `tokenExpiring` is sent
//! `auth.refresh_notice_secs` before `exp`; the client answers with `refreshToken`
//! (`{token}`, same user) and carries on under the new token and its roles; at `exp` without a
//! refresh it gets `tokenExpired` and is disconnected. Roles are re-read from every new token,
//! so a revoked `moderator` role leaves the moderators' room at the next refresh or at `exp`.

use std::sync::Arc;
use std::time::Duration;

use allo_common::auth::Caller;
use allo_common::ops::reports::MODERATOR_ROLE;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Data, SocketRef, State};

use crate::state::{Fanout, MODERATORS_ROOM};

/// Longest sleep of a watcher between looks at its socket's token.
const LOOK_AGAIN: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct Refresh {
    token: String,
}

/// Watches the socket's token until the socket goes: warns before `exp`, disconnects at it.
pub fn watch(socket: SocketRef, notice_secs: u64) {
    let notice = i64::try_from(notice_secs).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let mut warned_for = None;
        while socket.connected() {
            let Some(caller) = socket.extensions.get::<Caller>() else {
                return;
            };
            let left = caller.expires_at - Utc::now().timestamp();
            if left <= 0 {
                let _ = socket.emit("tokenExpired", &json!({"expiresAt": caller.expires_at}));
                tracing::info!(sid = %socket.id, user = %caller.user, "token expired; socket disconnected");
                let _ = socket.clone().disconnect();
                return;
            }
            if left <= notice && warned_for != Some(caller.expires_at) {
                let _ = socket.emit("tokenExpiring", &json!({"expiresAt": caller.expires_at}));
                warned_for = Some(caller.expires_at);
            }
            let until_next = if left > notice { left - notice } else { left };
            let wait = Duration::from_secs(u64::try_from(until_next).unwrap_or(1));
            tokio::time::sleep(wait.min(LOOK_AGAIN)).await;
        }
    });
}

/// `refreshToken {token}`: a valid token of the same user replaces the socket's token (and its
/// roles); anything else is refused and the socket keeps its current token until `exp`.
pub async fn refresh(
    socket: SocketRef,
    Data(body): Data<Value>,
    ack: AckSender,
    State(fanout): State<Arc<Fanout>>,
) {
    let reply = match apply_refresh(&socket, &fanout, body) {
        Ok(caller) => json!({"refreshed": true, "expiresAt": caller.expires_at}),
        Err((code, detail)) => json!({"error": {"status": 401, "code": code, "detail": detail}}),
    };
    let _ = ack.send(&reply);
}

fn apply_refresh(
    socket: &SocketRef,
    fanout: &Fanout,
    body: Value,
) -> Result<Caller, (&'static str, String)> {
    let Refresh { token } = serde_json::from_value(body)
        .map_err(|_| ("invalid", "refreshToken takes {token}".to_string()))?;
    let fresh = fanout
        .keys
        .verify(&token)
        .map_err(|e| ("unauthorized", e.to_string()))?;
    let current = socket
        .extensions
        .get::<Caller>()
        .ok_or(("unauthorized", "socket has no token".to_string()))?;
    if fresh.user != current.user {
        return Err((
            "unauthorized",
            "the new token is for another user".to_string(),
        ));
    }
    if fresh.has_role(MODERATOR_ROLE) {
        socket.join(MODERATORS_ROOM);
    } else {
        socket.leave(MODERATORS_ROOM);
    }
    socket.extensions.insert(fresh.clone());
    Ok(fresh)
}
