//! Reading the Postgres event log for a resuming socket (in its own handler's task, never in
//! a feed's), and cutting off a socket whose send buffer is full.

use std::time::Duration;

use allo_common::event::EventEnvelope;
use allo_common::ids::ConversationId;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Events fetched from the log per query when replaying.
const REPLAY_PAGE: i64 = 200;
/// How often a cut-off socket's disconnect packet is offered again while its buffer is full.
const CUT_OFF_RETRY: Duration = Duration::from_millis(100);
/// How long a cut-off socket's disconnect packet is offered. Longer than engine.io's ping
/// interval plus ping timeout (25 s + 20 s by default): a client that stops reading for that
/// long has had its transport closed by the heartbeat, which is its disconnect.
const CUT_OFF_PATIENCE: Duration = Duration::from_secs(60);

/// How a replay ended.
pub enum Replayed {
    /// Every event up to the asked seq was queued on the socket (this many).
    All(i64),
    /// The socket's buffer filled up part-way (the caller refuses the join and cuts it off).
    BufferFull,
}

/// Sends the socket every logged event after `seen` up to `upto`. At most `limit` replays run
/// at once in this process (a share of the database pool), so a crowd of resuming sockets
/// leaves connections for everyone else's joins.
pub async fn replay(
    db: &PgPool,
    limit: &Semaphore,
    socket: &SocketRef,
    conversation: ConversationId,
    seen: i64,
    upto: i64,
) -> Result<Replayed, sqlx::Error> {
    let _permit = limit.acquire().await.map_err(|_| sqlx::Error::PoolClosed)?;
    let mut cursor = seen;
    let mut sent = 0;
    while cursor < upto {
        let page = load_events(db, conversation, cursor, Some(upto), REPLAY_PAGE).await?;
        if page.is_empty() {
            break;
        }
        for event in page {
            cursor = event.seq;
            if socket
                .emit(event.kind.as_str(), &event.socket_payload())
                .is_err()
            {
                return Ok(Replayed::BufferFull);
            }
            sent += 1;
            metrics::counter!("allo_events_replayed_total").increment(1);
        }
    }
    Ok(Replayed::All(sent))
}

/// Disconnects a socket whose send buffer is full, without waiting for it.
///
/// socketioxide's `disconnect()` queues a disconnect packet and refuses (`InternalChannelFull`)
/// while the buffer is full, and 0.18 offers no public way to close the engine.io transport
/// instead. So the socket leaves every room at once (nothing more is queued for it: the feed
/// already dropped it) and a task offers the packet again until the client has read enough to
/// make room; the client then sees `io server disconnect` after the events already buffered. A
/// client that stops reading altogether fails engine.io's heartbeat (no room for the ping, or
/// no pong), which closes its session: it sees the transport close when it reads again.
pub fn cut_off(socket: SocketRef) {
    socket.leave_all();
    if socket.clone().disconnect().is_ok() {
        return;
    }
    tokio::spawn(async move {
        let give_up = Instant::now() + CUT_OFF_PATIENCE;
        let mut retry = tokio::time::interval(CUT_OFF_RETRY);
        loop {
            retry.tick().await;
            if !socket.connected() || socket.clone().disconnect().is_ok() {
                return;
            }
            if Instant::now() >= give_up {
                tracing::warn!(sid = %socket.id, "slow socket never made room for its disconnect; left to the heartbeat");
                return;
            }
        }
    });
}

pub async fn load_events(
    db: &PgPool,
    conversation: ConversationId,
    after: i64,
    upto: Option<i64>,
    limit: i64,
) -> Result<Vec<EventEnvelope>, sqlx::Error> {
    // As every read serves them: erased content scrubbed, a hidden message's redacted.
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT event_json(e) FROM events e
         WHERE conversation_id = $1 AND seq > $2 AND ($3::bigint IS NULL OR seq <= $3)
         ORDER BY seq LIMIT $4",
    )
    .bind(conversation)
    .bind(after)
    .bind(upto)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| serde_json::from_value(row).ok())
        .collect())
}
