//! One conversation's feed in one fan-out process: the single task that delivers the
//! conversation's events to the sockets of this process that joined it.
//!
//! Guarantees per socket: events in `seq` order, no gap, no duplicate. Events can arrive from
//! NATS out of order (two workers commit 7 and 8 and publish 8 first), twice (the outbox relay
//! republished one) or not at all (lost between commit and publish): the feed keeps the last
//! delivered seq, holds later events for a short reorder window, and fills a gap that does not
//! close in time from the Postgres event log (a seq that exists was committed, and so were all
//! seqs before it, since seqs are handed out under the conversation's row lock).
//!
//! Joins, leaves and deliveries run in this one task, so a resuming socket's replay (events
//! after its `lastSeq`, from the log) and the live stream meet without a gap or a duplicate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use allo_common::config::FanoutSettings;
use allo_common::event::{EventEnvelope, EventType};
use allo_common::ids::{ConversationId, UserId};
use allo_common::subjects::Subjects;
use allo_common::trace;
use futures::StreamExt;
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

/// Events fetched from the log per query when replaying or filling a gap.
const LOG_PAGE: i64 = 200;
/// Quiet time after which the feed checks the log for a lost last event.
const TAIL_CHECK: Duration = Duration::from_secs(1);
/// How often a cut-off socket's disconnect packet is offered again while its buffer is full.
const CUT_OFF_RETRY: Duration = Duration::from_millis(100);
/// How long a cut-off socket's disconnect packet is offered. Longer than engine.io's ping
/// interval plus ping timeout (25 s + 20 s by default): a client that stops reading for that
/// long has had its transport closed by the heartbeat, which is its disconnect.
const CUT_OFF_PATIENCE: Duration = Duration::from_secs(60);

pub enum FeedCommand {
    Join {
        socket: SocketRef,
        user: UserId,
        last_seq: Option<i64>,
        reply: oneshot::Sender<Value>,
    },
    Leave {
        sid: Sid,
    },
    Typing {
        sid: Sid,
        user: UserId,
        typing: bool,
    },
}

/// What every feed of the process shares.
pub struct FeedContext {
    pub db: PgPool,
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub settings: FanoutSettings,
    /// This process, in signals, so a replica can tell its own typing echo.
    pub replica: String,
}

type Registry = Arc<Mutex<HashMap<ConversationId, mpsc::Sender<FeedCommand>>>>;

/// The feeds of this process, one per conversation that a local socket joined.
pub struct Feeds {
    registry: Registry,
    ctx: Arc<FeedContext>,
}

impl Feeds {
    pub fn new(ctx: FeedContext) -> Self {
        Self {
            registry: Arc::default(),
            ctx: Arc::new(ctx),
        }
    }

    /// Sends a command to the conversation's feed, starting the feed (and its NATS
    /// subscriptions) if this process has none yet.
    pub async fn send(
        &self,
        conversation: ConversationId,
        command: FeedCommand,
    ) -> Result<(), String> {
        let mut registry = self.registry.lock().await;
        let mut command = command;
        if let Some(tx) = registry.get(&conversation) {
            match tx.send(command).await {
                Ok(()) => return Ok(()),
                // The feed just ended; start a new one.
                Err(mpsc::error::SendError(back)) => command = back,
            }
        }
        if matches!(
            command,
            FeedCommand::Leave { .. } | FeedCommand::Typing { .. }
        ) {
            return Ok(());
        }
        let feed = Feed::start(self.ctx.clone(), conversation).await?;
        let (tx, rx) = mpsc::channel(256);
        tx.send(command)
            .await
            .map_err(|_| "feed did not start".to_string())?;
        registry.insert(conversation, tx);
        tokio::spawn(feed.run(rx, self.registry.clone()));
        Ok(())
    }

    /// Tells every feed a socket is gone.
    pub async fn forget(&self, sid: Sid, conversations: &[ConversationId]) {
        for conversation in conversations {
            let _ = self.send(*conversation, FeedCommand::Leave { sid }).await;
        }
    }
}

struct Member {
    socket: SocketRef,
    user: UserId,
    /// Events up to this seq are not sent to this socket (it has them).
    floor: i64,
}

struct Feed {
    ctx: Arc<FeedContext>,
    conversation: ConversationId,
    events: async_nats::Subscriber,
    signals: async_nats::Subscriber,
    delivered: i64,
    pending: BTreeMap<i64, EventEnvelope>,
    gap_deadline: Option<Instant>,
    tail_check: Option<Instant>,
    members: HashMap<Sid, Member>,
}

impl Feed {
    /// Subscribes first, then reads where the conversation stands: every event after that
    /// point arrives on the subscription, and those at or before it are dropped as known.
    async fn start(ctx: Arc<FeedContext>, conversation: ConversationId) -> Result<Feed, String> {
        let events = ctx
            .nats
            .subscribe(ctx.subjects.conversation_events(conversation))
            .await
            .map_err(|e| e.to_string())?;
        let signals = ctx
            .nats
            .subscribe(ctx.subjects.conversation_signals(conversation))
            .await
            .map_err(|e| e.to_string())?;
        let delivered: i64 = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = $1")
            .bind(conversation)
            .fetch_optional(&ctx.db)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(0);
        Ok(Feed {
            ctx,
            conversation,
            events,
            signals,
            delivered,
            pending: BTreeMap::new(),
            gap_deadline: None,
            tail_check: None,
            members: HashMap::new(),
        })
    }

    async fn run(mut self, mut commands: mpsc::Receiver<FeedCommand>, registry: Registry) {
        metrics::gauge!("allo_feeds_active").increment(1.0);
        let far = || Instant::now() + Duration::from_secs(3600);
        loop {
            let deadline = match (self.gap_deadline, self.tail_check) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or_else(far),
            };
            tokio::select! {
                Some(msg) = self.events.next() => {
                    log_trace(&msg);
                    match serde_json::from_slice::<EventEnvelope>(&msg.payload) {
                        Ok(event) => self.on_event(event).await,
                        Err(e) => tracing::warn!(error = %e, subject = %msg.subject, "undecodable event dropped"),
                    }
                }
                Some(msg) = self.signals.next() => self.on_signal(msg).await,
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => self.on_timer().await,
            }
            if self.members.is_empty() {
                // Unsubscribe on last leave, unless a join is already queued for us.
                if let Ok(mut registry) = registry.try_lock()
                    && commands.is_empty()
                {
                    registry.remove(&self.conversation);
                    break;
                }
            }
        }
        metrics::gauge!("allo_feeds_active").decrement(1.0);
    }

    async fn on_event(&mut self, event: EventEnvelope) {
        if event.seq <= self.delivered {
            return; // already delivered (a republish, or before this feed started)
        }
        self.pending.insert(event.seq, event);
        self.drain().await;
        if !self.pending.is_empty() && self.gap_deadline.is_none() {
            self.gap_deadline =
                Some(Instant::now() + Duration::from_millis(self.ctx.settings.reorder_window_ms));
        }
    }

    /// Delivers pending events while they continue the sequence.
    async fn drain(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.delivered + 1 {
                break;
            }
            let event = entry.remove();
            self.deliver(&event);
        }
        if self.pending.is_empty() {
            self.gap_deadline = None;
        }
        self.tail_check = Some(Instant::now() + TAIL_CHECK);
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.gap_deadline.is_some_and(|d| d <= now) {
            self.gap_deadline = None;
            let upto = self.pending.keys().next().copied().map(|first| first - 1);
            self.fill_from_log(upto).await;
            if !self.pending.is_empty() {
                // Still missing (the log did not answer): try again after another window.
                self.gap_deadline =
                    Some(now + Duration::from_millis(self.ctx.settings.reorder_window_ms));
            }
        }
        if self.tail_check.is_some_and(|d| d <= now) {
            self.tail_check = None;
            if self.pending.is_empty() {
                // A lost publish of the newest event shows no gap; ask the log once per burst.
                self.fill_from_log(None).await;
            }
        }
    }

    /// Delivers from the Postgres log every event after the delivered seq, up to `upto`
    /// (or the end), then whatever pending events follow.
    async fn fill_from_log(&mut self, upto: Option<i64>) {
        loop {
            let page = match load_events(
                &self.ctx.db,
                self.conversation,
                self.delivered,
                upto,
                LOG_PAGE,
            )
            .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "event log unavailable; gap stays open");
                    return;
                }
            };
            let full = page.len() as i64 == LOG_PAGE;
            for event in page {
                if event.seq == self.delivered + 1 {
                    metrics::counter!("allo_gap_fills_total").increment(1);
                    self.pending.remove(&event.seq);
                    self.deliver(&event);
                }
            }
            if !full {
                break;
            }
        }
        self.drain().await;
    }

    /// Sends one event to every member that does not have it yet. The payload is encoded once;
    /// a socket whose buffer is full is a slow consumer and is disconnected (it resumes with
    /// its `lastSeq`), so memory stays bounded.
    fn deliver(&mut self, event: &EventEnvelope) {
        self.delivered = event.seq;
        let payload = match serde_json::value::to_raw_value(&event.socket_payload()) {
            Ok(p) => p,
            Err(_) => return,
        };
        let mut gone = Vec::new();
        for (sid, member) in &self.members {
            if member.floor >= event.seq {
                continue;
            }
            metrics::counter!("allo_events_delivered_total").increment(1);
            if let Err(e) = member.socket.emit(event.kind.as_str(), &payload) {
                tracing::info!(sid = %sid, error = %e, "slow or closed socket disconnected");
                metrics::counter!("allo_slow_consumers_total").increment(1);
                gone.push(*sid);
            }
        }
        for sid in gone {
            if let Some(member) = self.members.remove(&sid) {
                cut_off(member.socket);
            }
        }
        // Who left or was removed stops receiving at once (after seeing that event).
        if matches!(
            event.kind,
            EventType::ParticipantLeft | EventType::ParticipantRemoved
        ) && let Some(user) = event.data["userID"].as_str()
        {
            self.members.retain(|_, m| m.user.as_str() != user);
        }
    }

    async fn on_command(&mut self, command: FeedCommand) {
        match command {
            FeedCommand::Join {
                socket,
                user,
                last_seq,
                reply,
            } => {
                let ack = self.join(socket, user, last_seq).await;
                let _ = reply.send(ack);
            }
            FeedCommand::Leave { sid } => {
                if let Some(member) = self.members.remove(&sid) {
                    self.announce_presence(&member.user).await;
                }
            }
            FeedCommand::Typing { sid, user, typing } => {
                if self.members.contains_key(&sid) {
                    let signal = json!({"userID": user, "typing": typing, "replica": self.ctx.replica, "sid": sid.to_string()});
                    self.signal("typing", &signal).await;
                }
            }
        }
    }

    async fn join(&mut self, socket: SocketRef, user: UserId, last_seq: Option<i64>) -> Value {
        let sid = socket.id;
        let was_online = self.members.values().any(|m| m.user == user);
        let (recovered, replayed, floor) = match last_seq {
            None => (true, 0, self.delivered),
            Some(seen) if seen >= self.delivered => (true, 0, seen),
            Some(seen) if self.delivered - seen > self.ctx.settings.replay_max => {
                (false, 0, self.delivered)
            }
            Some(seen) => match self.replay(&socket, seen).await {
                Ok(Replayed::All(n)) => (true, n, self.delivered),
                Ok(Replayed::BufferFull) => {
                    // Joining now would leave a gap behind what it did get: treat it as the
                    // slow consumer it is; it reconnects and resumes from what it saw.
                    metrics::counter!("allo_slow_consumers_total").increment(1);
                    cut_off(socket);
                    return json!({
                        "joined": false,
                        "conversationID": self.conversation,
                        "code": "slow_consumer",
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replay failed");
                    (false, 0, self.delivered)
                }
            },
        };
        self.members.insert(
            sid,
            Member {
                socket,
                user: user.clone(),
                floor,
            },
        );
        if !was_online {
            self.announce_presence(&user).await;
        }
        json!({
            "joined": true,
            "conversationID": self.conversation,
            "recovered": recovered,
            "replayed": replayed,
            "lastSeq": floor.max(self.delivered),
        })
    }

    /// Sends the socket every logged event after `seen` up to the delivered seq.
    async fn replay(&self, socket: &SocketRef, seen: i64) -> Result<Replayed, sqlx::Error> {
        let mut cursor = seen;
        let mut sent = 0;
        while cursor < self.delivered {
            let page = load_events(
                &self.ctx.db,
                self.conversation,
                cursor,
                Some(self.delivered),
                LOG_PAGE,
            )
            .await?;
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

    async fn signal(&self, kind: &str, body: &Value) {
        let subject = self.ctx.subjects.signal(self.conversation, kind);
        let _ = self
            .ctx
            .nats
            .publish(subject, body.to_string().into())
            .await;
    }

    /// Tells every replica whether `user` is online here (has a socket in this feed).
    async fn announce_presence(&self, user: &UserId) {
        let online = self.members.values().any(|m| &m.user == user);
        self.signal(
            "presence",
            &json!({"userID": user, "online": online, "replica": self.ctx.replica}),
        )
        .await;
    }

    async fn on_signal(&mut self, msg: async_nats::Message) {
        let kind = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let Ok(body) = serde_json::from_slice::<Value>(&msg.payload) else {
            return;
        };
        let conversation = self.conversation.to_string();
        match kind.as_str() {
            "typing" => {
                let origin = (body["replica"].as_str(), body["sid"].as_str());
                let payload = json!({"conversationID": conversation, "userID": body["userID"], "typing": body["typing"]});
                for (sid, member) in &self.members {
                    let own = origin
                        == (
                            Some(self.ctx.replica.as_str()),
                            Some(sid.to_string().as_str()),
                        );
                    if !own {
                        let _ = member.socket.emit("typing", &payload);
                    }
                }
            }
            "presence" => {
                let user = body["userID"].as_str().unwrap_or_default().to_string();
                let online_here = self.members.values().any(|m| m.user.as_str() == user);
                if body["online"] == false
                    && online_here
                    && body["replica"] != self.ctx.replica.as_str()
                {
                    // Offline on that replica, still online here: say so.
                    if let Ok(user) = UserId::parse(&user) {
                        self.announce_presence(&user).await;
                    }
                    return;
                }
                let payload = json!({"conversationID": conversation, "userID": user, "online": body["online"]});
                for member in self.members.values() {
                    let _ = member.socket.emit("presence", &payload);
                }
            }
            "who" => {
                if let Some(reply) = msg.reply {
                    let mut users: Vec<&str> =
                        self.members.values().map(|m| m.user.as_str()).collect();
                    users.sort_unstable();
                    users.dedup();
                    let _ = self
                        .ctx
                        .nats
                        .publish(reply, json!(users).to_string().into())
                        .await;
                }
            }
            _ => {}
        }
    }
}

/// How a replay ended.
enum Replayed {
    /// Every missed event was queued on the socket (this many).
    All(i64),
    /// The socket's buffer filled up part-way.
    BufferFull,
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
/// The event's command and trace (from its NATS headers) in this replica's log, at debug level
/// under `allo::trace`: the fan-out's part of following one command through every service.
fn log_trace(msg: &async_nats::Message) {
    if tracing::enabled!(target: trace::TARGET, tracing::Level::DEBUG) {
        let (command_id, context) = trace::from_headers(msg.headers.as_ref());
        let trace_id = context.map(|c| c.trace_id()).unwrap_or_default();
        let command_id = command_id.unwrap_or_default();
        tracing::debug!(target: trace::TARGET, %command_id, %trace_id, subject = %msg.subject, "event received");
    }
}

fn cut_off(socket: SocketRef) {
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

async fn load_events(
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
