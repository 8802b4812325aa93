//! `joinConversation`: bounded (per-user rate, conversations per socket), checked against
//! Postgres, replayed from the log in this handler's own task, then decided and attached by the
//! conversation's feed at its own seq (see `crate::feed`). Nothing here waits on a feed that
//! is not keeping up: its full queue is refused with `busy`.

use std::sync::Arc;

use allo_common::auth::Caller;
use allo_common::ids::ConversationId;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Data, Extension, SocketRef, State};
use tokio::sync::oneshot;

use crate::registry::{FeedCommand, JoinOutcome, JoinRequest, Refused};
use crate::replay::{Replayed, cut_off, replay};
use crate::socket::{SocketState, parse_join};
use crate::state::Fanout;

/// Rounds of "check, replay, ask the feed" before a join gives up with `busy` (each round
/// after the first means the conversation moved on while the socket was being caught up).
const ATTEMPTS: usize = 4;
/// How long a slow consumer's refusal waits for room in its send buffer.
const SLOW_ACK_ROOM: std::time::Duration = std::time::Duration::from_millis(200);
/// What `busy` asks the client to wait before trying again.
const BUSY_RETRY_SECS: u64 = 1;

/// A refused join: the ack's `code`, a readable `message` and, where waiting helps,
/// `retryAfter` in seconds.
pub struct JoinRefusal {
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

fn refuse(code: &'static str, message: impl Into<String>) -> JoinRefusal {
    JoinRefusal {
        code,
        message: message.into(),
        retry_after: None,
    }
}

fn not_participant() -> JoinRefusal {
    refuse(
        "not_participant",
        "you are not a participant of this conversation",
    )
}

fn busy() -> JoinRefusal {
    JoinRefusal {
        code: "busy",
        message: "this conversation is busy here; try again shortly".into(),
        retry_after: Some(BUSY_RETRY_SECS),
    }
}

pub async fn join_conversation(
    socket: SocketRef,
    Data(payload): Data<Value>,
    ack: AckSender,
    Extension(caller): Extension<Caller>,
    Extension(state): Extension<SocketState>,
    State(fanout): State<Arc<Fanout>>,
) {
    match admit(&socket, &payload, &caller, &state, &fanout).await {
        Ok(reply) => {
            let _ = ack.send(&reply);
        }
        Err(refusal) => {
            let mut body = json!({"code": refusal.code, "message": refusal.message});
            if let Some(secs) = refusal.retry_after {
                body["retryAfter"] = json!(secs);
            }
            let slow = refusal.code == "slow_consumer";
            if slow {
                // Its buffer was full a moment ago: give the transport time to drain so the
                // refusal finds room (its ack is all it gets), then cut it off.
                tokio::time::sleep(SLOW_ACK_ROOM).await;
            } else {
                let mut event = body.clone();
                event["event"] = json!("joinConversation");
                let _ = socket.emit("error", &event);
            }
            body["joined"] = json!(false);
            let _ = ack.send(&body);
            if slow {
                metrics::counter!("allo_slow_consumers_total").increment(1);
                cut_off(socket);
            }
        }
    }
}

async fn admit(
    socket: &SocketRef,
    payload: &Value,
    caller: &Caller,
    state: &SocketState,
    fanout: &Fanout,
) -> Result<Value, JoinRefusal> {
    let (conversation, last_seq) = parse_join(payload).map_err(|m| refuse("invalid", m))?;
    let limits = &fanout.settings.limits.fanout;
    fanout
        .join_rate
        .check(&caller.user)
        .map_err(|secs| JoinRefusal {
            code: "rate_limited",
            message: format!(
                "at most {} joins per {} s; try again later",
                limits.joins_per_window, limits.window_secs
            ),
            retry_after: Some(secs),
        })?;
    let _reservation = state
        .reserve(conversation, limits.joined_per_socket)
        .ok_or_else(|| {
            refuse(
                "too_many_joined",
                format!(
                    "a socket may join at most {} conversations; leave one first",
                    limits.joined_per_socket
                ),
            )
        })?;
    let (history_floor, mut checked_at) = membership(fanout, conversation, caller).await?;
    // A resume never replays what the user may not read (history before their join).
    let seen = last_seq.map(|seen| seen.max(history_floor - 1));
    let mut recovered = true;
    let mut has_upto = match seen {
        Some(seen) if checked_at - seen > fanout.settings.fanout.replay_max => {
            recovered = false;
            None
        }
        other => other,
    };
    let mut target = checked_at;
    let mut replayed = 0;
    for _ in 0..ATTEMPTS {
        if let Some(upto) = has_upto
            && upto < target
        {
            match replay(
                &fanout.db,
                &fanout.replays,
                socket,
                conversation,
                upto,
                target,
            )
            .await
            {
                Ok(Replayed::All(n)) => {
                    replayed += n;
                    has_upto = Some(target);
                }
                Ok(Replayed::BufferFull) => return Err(slow_consumer()),
                Err(e) => {
                    tracing::warn!(error = %e, "replay failed");
                    return Err(unavailable());
                }
            }
        }
        let (reply, answer) = oneshot::channel();
        let request = JoinRequest {
            socket: socket.clone(),
            user: caller.user.clone(),
            checked_at,
            has_upto,
            history_floor,
            reply,
        };
        match fanout
            .feeds
            .command(conversation, FeedCommand::Join(Box::new(request)))
        {
            Ok(()) => {}
            Err(Refused::Busy | Refused::NoFeed) => return Err(busy()),
        }
        match answer.await.map_err(|_| unavailable())? {
            JoinOutcome::Joined { last_seq } => {
                state.joined(conversation);
                if !socket.connected() {
                    // Gone while joining: its disconnect did not know this conversation yet.
                    fanout.feeds.leave(conversation, socket.id);
                }
                return Ok(json!({
                    "joined": true,
                    "conversationID": conversation,
                    "recovered": recovered,
                    "replayed": replayed,
                    "lastSeq": last_seq,
                }));
            }
            JoinOutcome::NotMember => return Err(not_participant()),
            JoinOutcome::SlowConsumer => return Err(slow_consumer()),
            JoinOutcome::Behind { upto } => target = upto,
            JoinOutcome::Stale => {
                (_, checked_at) = membership(fanout, conversation, caller).await?;
                target = checked_at;
            }
        }
    }
    Err(busy())
}

/// The user's history floor and the conversation's last seq, read in one snapshot; refuses a
/// user who is not an active participant in it.
async fn membership(
    fanout: &Fanout,
    conversation: ConversationId,
    caller: &Caller,
) -> Result<(i64, i64), JoinRefusal> {
    match fanout.membership(conversation, &caller.user).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(not_participant()),
        Err(e) => {
            tracing::warn!(error = %e, "membership check failed");
            Err(refuse(
                "unavailable",
                "could not check membership; try again",
            ))
        }
    }
}

fn unavailable() -> JoinRefusal {
    refuse("unavailable", "could not join; try again")
}

/// Joining now would leave a gap behind what the socket got: it is treated as the slow
/// consumer it is (refused, then cut off); it reconnects and resumes from what it saw.
fn slow_consumer() -> JoinRefusal {
    refuse(
        "slow_consumer",
        "the replay did not fit your send buffer; reconnect and resume",
    )
}
