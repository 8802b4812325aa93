//! A socket lives as long as its token, not longer. `tokenExpiring` is sent
//! `auth.refresh_notice_secs` before `exp`; the client answers with `refreshToken`
//! (`{token}`, same user) and carries on under the new token and its roles; at `exp` without a
//! refresh it gets `tokenExpired` and is disconnected. Roles are re-read from every new token,
//! so a revoked `moderator` role leaves the moderators' room at the next refresh or at `exp`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allo_common::auth::Caller;
use allo_common::ops::reports::MODERATOR_ROLE;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, State};
use socketioxide::socket::Sid;
use tokio::sync::Notify;

use crate::socket::SocketState;
use crate::state::{Fanout, MODERATORS_ROOM};

#[derive(Deserialize)]
struct Refresh {
    token: String,
}

/// The token deadlines of this process's sockets, watched by one task.
///
/// A task per socket (sleeping until its next look, at most 30 s) cost about 0.4 KB and a
/// wake-up every 30 s per idle socket; here a socket costs one entry, and the task wakes only
/// when some deadline is due. A socket's deadline that counts is the one in its
/// [`SocketState`]: an entry that no longer matches it (the token was refreshed) is dropped when
/// it comes up.
#[derive(Clone, Default)]
pub struct Deadlines {
    /// (Unix second of the next look, socket).
    due: Arc<Mutex<BTreeSet<(i64, Sid)>>>,
    /// Wakes the task when a deadline earlier than all others was added.
    earlier: Arc<Notify>,
}

impl Deadlines {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(i64, Sid)>> {
        // Every change is one set operation: a poisoned lock still holds a consistent set.
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks at the socket's token now (warns, or disconnects at `exp`) and schedules the
    /// next look: at connect and after every refresh.
    pub fn watch(&self, socket: &SocketRef, notice_secs: u64) {
        self.look(socket, notice_secs);
    }

    /// Forgets a socket that disconnected.
    pub fn forget(&self, socket: &SocketRef, state: &SocketState) {
        let due = state.set_token_due(0);
        self.lock().remove(&(due, socket.id));
    }

    fn schedule(&self, socket: &SocketRef, state: &SocketState, at: i64) {
        let before = state.set_token_due(at);
        let mut due = self.lock();
        due.remove(&(before, socket.id));
        let first = due.first().is_none_or(|(t, _)| at < *t);
        due.insert((at, socket.id));
        drop(due);
        if first {
            self.earlier.notify_one();
        }
    }

    fn look(&self, socket: &SocketRef, notice_secs: u64) {
        let (Some(caller), Some(state)) = (
            socket.extensions.get::<Caller>(),
            socket.extensions.get::<SocketState>(),
        ) else {
            return;
        };
        let notice = i64::try_from(notice_secs).unwrap_or(i64::MAX);
        let left = caller.expires_at - Utc::now().timestamp();
        if left <= 0 {
            self.forget(socket, &state);
            let _ = socket.emit("tokenExpired", &json!({"expiresAt": caller.expires_at}));
            tracing::info!(sid = %socket.id, user = %caller.user, "token expired; socket disconnected");
            let _ = socket.clone().disconnect();
            return;
        }
        if left <= notice && state.warn_once(caller.expires_at) {
            let _ = socket.emit("tokenExpiring", &json!({"expiresAt": caller.expires_at}));
        }
        let next = if left > notice {
            caller.expires_at - notice
        } else {
            caller.expires_at
        };
        self.schedule(socket, &state, next);
    }

    /// Runs the watcher until the process ends.
    pub fn spawn(self, io: SocketIo, notice_secs: u64) {
        tokio::spawn(async move {
            loop {
                let now = Utc::now().timestamp();
                let next = self.lock().first().copied();
                match next {
                    Some((at, sid)) if at <= now => {
                        self.lock().remove(&(at, sid));
                        if let Some(socket) = io.get_socket(sid)
                            && socket.connected()
                            && socket
                                .extensions
                                .get::<SocketState>()
                                .is_some_and(|s| s.token_due() == at)
                        {
                            self.look(&socket, notice_secs);
                        }
                    }
                    Some((at, _)) => {
                        let wait = Duration::from_secs(u64::try_from(at - now).unwrap_or(1));
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.earlier.notified() => {}
                        }
                    }
                    None => self.earlier.notified().await,
                }
            }
        });
    }
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
    // The new expiry replaces the old one's deadline.
    fanout
        .deadlines
        .watch(socket, fanout.settings.auth.refresh_notice_secs);
    Ok(fresh)
}
