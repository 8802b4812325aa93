//! The pull loop a pool's processes share, and the lanes it feeds.
//!
//! One task pulls the pool's commands and routes each to a lane by its conversation; each lane
//! applies whatever has arrived for it (up to `batch_size`) as one batch, one batch at a time.
//! So a conversation's commands are applied by one lane in stream order and batches in one
//! process never wait on each other's conversation locks (see [`crate::batch`] for a batch).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use allo_common::Settings;
use allo_common::command::{CommandEnvelope, CommandOutcome};
use allo_common::event::{EventEnvelope, UserNotice};
use allo_common::ids::UserId;
use allo_common::ops::Pool;
use allo_common::subjects::Subjects;
use anyhow::Context;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

pub use crate::apply::Applied;
use crate::apply::PublishedMark;
use crate::batch::{Marks, Settlement, take_marks};
use crate::publish::Publisher;

/// How long, at shutdown, the pull is read out for commands already delivered to this process.
const HAND_BACK_DRAIN: Duration = Duration::from_millis(250);

/// How long a handed-back command waits before it is delivered again.
const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

/// Committed batches a lane may have waiting for their publish.
const SETTLE_QUEUE: usize = 4;

/// How long an idle lane keeps its published marks for the next batch before writing them.
const MARK_IDLE: Duration = Duration::from_millis(250);

/// A command as pulled: its message (to settle), what it decoded to, and its delivery count.
pub(crate) struct Delivery {
    pub msg: jetstream::Message,
    /// `Err` carries why it could not be decoded (it is dead-lettered at once).
    pub envelope: Result<CommandEnvelope, String>,
    pub delivered: i64,
}

/// Shared by every pool task of a process. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<Settings>,
    db: PgPool,
    nats: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    publisher: Publisher,
    /// Events on the stream (id, stream sequence), marked `published_at` (and `stream_seq`)
    /// in batches by a background task.
    published: mpsc::Sender<PublishedMark>,
    /// Every command this process holds unsettled (pulled, not yet acked, nak'ed or
    /// terminated), by stream sequence: kept alive while Postgres is away.
    held: std::sync::Mutex<HashMap<u64, jetstream::Message>>,
    /// Set while a batch is waiting for Postgres to come back.
    db_away: AtomicBool,
}

impl Worker {
    pub fn new(settings: Arc<Settings>, db: PgPool, nats: async_nats::Client) -> Self {
        let js = jetstream::new(nats.clone());
        let subjects = Subjects::new(&settings.subject_prefix);
        let publisher = Publisher::new(js.clone(), subjects.clone());
        // Bounded: if marking falls behind, publishing waits rather than memory growing.
        let (published, marks) = mpsc::channel(10_000);
        tokio::spawn(mark_published(db.clone(), marks));
        Self {
            inner: Arc::new(Inner {
                settings,
                db,
                nats,
                js,
                subjects,
                publisher,
                published,
                held: Default::default(),
                db_away: AtomicBool::new(false),
            }),
        }
    }

    /// Gives the marker task a moment to write the last batch before the process exits.
    pub async fn flush_published(&self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Pulls and handles the pool's commands until `shutdown`; then hands back (nak) whatever
    /// it holds but has not started, and finishes the batches under way.
    pub async fn run_pool(
        &self,
        pool: Pool,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let me = &self.inner;
        let consumer: jetstream::consumer::PullConsumer = me
            .js
            .get_stream(me.subjects.command_stream())
            .await
            .context("command stream")?
            .get_consumer(&me.subjects.pool_consumer(pool))
            .await
            .map_err(|e| anyhow::anyhow!("pool consumer: {e}"))?;
        let batch_size = me.settings.worker.batch_size;
        // Unbounded queues, bounded all the same: the consumer's `max_ack_pending` caps what
        // this pool holds unacked, and a full lane must not stop the pull for the others.
        let (lanes, mut lane_tasks): (Vec<_>, tokio::task::JoinSet<()>) = {
            let mut tasks = tokio::task::JoinSet::new();
            let senders = (0..me.settings.worker.concurrency.max(1))
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    // A little room, so the lane applies its next batch while the last one
                    // is being published; bounded, so a slow NATS slows the lane.
                    let (settle_tx, settle_rx) = mpsc::channel(SETTLE_QUEUE);
                    let marks = Marks::default();
                    tasks.spawn(self.clone().run_lane(
                        rx,
                        settle_tx,
                        marks.clone(),
                        batch_size,
                        shutdown.clone(),
                    ));
                    tasks.spawn(self.clone().run_settle(settle_rx, marks));
                    tx
                })
                .collect();
            (senders, tasks)
        };
        let keepalive = tokio::spawn(self.clone().keep_alive_while_db_away());
        tracing::info!(pool = pool.as_str(), lanes = lanes.len(), "pool started");
        while !*shutdown.borrow() {
            let messages = match consumer
                .stream()
                .max_messages_per_batch(batch_size)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, pool = pool.as_str(), "pull failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut messages = std::pin::pin!(messages);
            let mut stop = shutdown.clone();
            loop {
                let msg = tokio::select! {
                    msg = messages.next() => Some(msg),
                    _ = stop.wait_for(|s| *s) => None,
                };
                let Some(msg) = msg else {
                    // What the pull already delivered to this process goes back now, not
                    // after ack_wait: read it out for a moment and nak it.
                    // At most what the open pull requests can have sent us: past that the
                    // stream would only be pulling new work to hand straight back.
                    let mut left = 2 * batch_size;
                    while left > 0
                        && let Ok(Some(msg)) =
                            tokio::time::timeout(HAND_BACK_DRAIN, messages.next()).await
                    {
                        left -= 1;
                        if let Ok(msg) = msg {
                            hand_back(&msg).await;
                        }
                    }
                    break;
                };
                let msg = match msg {
                    None => break,
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "pull stream error");
                        continue;
                    }
                };
                self.hold(&msg);
                let delivery = decode(msg);
                let lane = lane_of(&delivery, lanes.len());
                if let Err(mpsc::error::SendError(d)) = lanes[lane].send(delivery) {
                    self.release(&d.msg);
                    hand_back(&d.msg).await;
                }
            }
        }
        drop(lanes);
        while lane_tasks.join_next().await.is_some() {}
        keepalive.abort();
        tracing::info!(pool = pool.as_str(), "pool stopped");
        Ok(())
    }

    /// One lane: a batch at a time from what has arrived, handed to its settle task once
    /// committed. After shutdown, hands back the rest.
    async fn run_lane(
        self,
        mut queue: mpsc::UnboundedReceiver<Delivery>,
        settle: mpsc::Sender<Settlement>,
        marks: Marks,
        batch_size: usize,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(batch_size);
        loop {
            // Published marks ride on the next batch's transaction; an idle lane writes them
            // on their own, well inside the relay's grace.
            let received = match tokio::time::timeout(
                MARK_IDLE,
                queue.recv_many(&mut batch, batch_size),
            )
            .await
            {
                Ok(n) => n,
                Err(_) => {
                    self.flush_marks(&marks).await;
                    continue;
                }
            };
            if received == 0 {
                break;
            }
            if *shutdown.borrow() {
                for delivery in batch.drain(..) {
                    self.release(&delivery.msg);
                    hand_back(&delivery.msg).await;
                }
                continue;
            }
            if let Some(settlement) = self
                .apply_deliveries(std::mem::take(&mut batch), &marks)
                .await
                && let Err(mpsc::error::SendError(settlement)) = settle.send(settlement).await
            {
                // The settle task is gone (cannot happen while we hold its sender); settle here.
                self.settle(settlement, &marks).await;
            }
        }
    }

    /// Settles a lane's committed batches in order, then writes the last marks.
    async fn run_settle(self, mut queue: mpsc::Receiver<Settlement>, marks: Marks) {
        while let Some(settlement) = queue.recv().await {
            self.settle(settlement, &marks).await;
        }
        self.flush_marks(&marks).await;
    }

    async fn flush_marks(&self, marks: &Marks) {
        let events = take_marks(marks);
        if events.is_empty() {
            return;
        }
        if let Err(e) = crate::apply::mark_published(self.db(), &events).await {
            tracing::warn!(error = %e, "could not mark events published; the relay will republish them");
        }
    }

    /// Publishes committed events and queues their `published_at` marks; on failure the relay
    /// publishes them later.
    pub async fn publish_events(&self, events: &[EventEnvelope]) {
        if events.is_empty() {
            return;
        }
        let me = &self.inner;
        match me.publisher.events(events).await {
            Ok(seqs) => {
                for (e, seq) in events.iter().zip(seqs) {
                    let _ = me.published.send((e.event_id, seq)).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "event publish failed; the relay will retry"),
        }
    }

    /// The outcome for a `Prefer: wait` request (core NATS: nobody listening is fine).
    pub(crate) async fn publish_outcome(&self, outcome: &CommandOutcome) {
        let me = &self.inner;
        let payload = serde_json::to_vec(outcome).unwrap_or_default();
        let _ = me
            .nats
            .publish(
                me.subjects.command_outcome(outcome.command_id),
                payload.into(),
            )
            .await;
    }

    /// Publishes a notice to one user's sockets (best effort: logged if it fails).
    pub async fn notify(&self, user: &UserId, notice: &UserNotice, id: String) {
        if let Err(e) = self.inner.publisher.notice(user, notice, id).await {
            tracing::warn!(error = %e, "notice not published");
        }
    }

    fn hold(&self, msg: &jetstream::Message) {
        if let (Ok(info), Ok(mut held)) = (msg.info(), self.inner.held.lock()) {
            held.insert(info.stream_sequence, msg.clone());
        }
    }

    /// Forgets a command this process has settled (or handed back).
    pub(crate) fn release(&self, msg: &jetstream::Message) {
        if let (Ok(info), Ok(mut held)) = (msg.info(), self.inner.held.lock()) {
            held.remove(&info.stream_sequence);
        }
    }

    /// Records whether Postgres is away (a batch is retrying for it).
    pub(crate) fn set_db_away(&self, away: bool) {
        self.inner.db_away.store(away, Ordering::Relaxed);
    }

    /// While Postgres is away, tells NATS every third of `ack_wait` that each command this
    /// process holds (in a retrying batch, queued in a lane, or waiting to be settled) is still
    /// being worked on, so none is redelivered and none uses up a delivery. A process that is
    /// merely stuck sends nothing, and its commands are redelivered as usual.
    async fn keep_alive_while_db_away(self) {
        let every = (self.inner.settings.ack_wait() / 3).max(Duration::from_millis(500));
        loop {
            tokio::time::sleep(every).await;
            if !self.inner.db_away.load(Ordering::Relaxed) {
                continue;
            }
            let held: Vec<jetstream::Message> = match self.inner.held.lock() {
                Ok(held) => held.values().cloned().collect(),
                Err(_) => continue,
            };
            for msg in &held {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }

    pub(crate) fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    pub fn db(&self) -> &PgPool {
        &self.inner.db
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }
}

fn decode(msg: jetstream::Message) -> Delivery {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let envelope = serde_json::from_slice::<CommandEnvelope>(&msg.payload)
        .map_err(|e| crate::failures::decode_error_text(&e));
    Delivery {
        msg,
        envelope,
        delivered,
    }
}

/// The lane a delivery belongs to: by its conversation, so one lane applies all of a
/// conversation's commands (commands without one, by their id).
fn lane_of(delivery: &Delivery, lanes: usize) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    match &delivery.envelope {
        Ok(e) => match e.command.conversation_id() {
            Some(c) => c.hash(&mut hasher),
            None => e.command_id.hash(&mut hasher),
        },
        Err(_) => 0.hash(&mut hasher),
    }
    (hasher.finish() % lanes.max(1) as u64) as usize
}

/// Hands a command back to the stream at shutdown so another process takes it. After a
/// second, not at once: this process's pull is still open while it drains, and the server
/// would give the command straight back to it.
async fn hand_back(msg: &jetstream::Message) {
    let _ = msg.ack_with(AckKind::Nak(Some(HAND_BACK_DELAY))).await;
}

/// Marks published events in batches: one UPDATE per batch instead of one per event. A mark
/// lost in a crash only means the relay republishes, and NATS drops the duplicate.
async fn mark_published(db: PgPool, mut marks: mpsc::Receiver<PublishedMark>) {
    let mut batch = Vec::with_capacity(512);
    while marks.recv_many(&mut batch, 512).await > 0 {
        if let Err(e) = crate::apply::mark_published(&db, &batch).await {
            tracing::warn!(error = %e, "could not mark events published; the relay will republish them");
        }
        batch.clear();
    }
}
