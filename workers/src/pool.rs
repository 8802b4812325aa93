//! A pool in one process: the partitions it serves, and the lanes they feed.
//!
//! The pool's live processes split its partitions (crate::membership); a task per partition
//! served pulls its commands and routes each to a lane by its conversation (crate::pull); each
//! lane applies whatever has arrived for it (up to `batch_size`) as one batch, one batch at a
//! time. So a conversation's commands are applied by one lane of one process in stream order,
//! and batches never wait on each other's conversation locks (see [`crate::batch`]).

use std::collections::HashMap;
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
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

pub use crate::apply::Applied;
use crate::apply::PublishedMark;
use crate::batch::{Marks, Settlement, take_marks};
use crate::linger::Linger;
use crate::membership::Membership;
use crate::partitions::Served;
use crate::publish::Publisher;

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
    /// When it was pulled: a lane's wait for more counts from its oldest command.
    pub pulled_at: tokio::time::Instant,
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
    /// Events on the stream (id, stream sequence), marked published (out of `event_outbox`,
    /// into `event_stream_seqs`) in batches by a background task.
    published: mpsc::Sender<PublishedMark>,
    /// Every command this process holds unsettled (pulled, not yet acked, nak'ed or
    /// terminated), by stream sequence: kept alive while Postgres is away.
    held: std::sync::Mutex<HashMap<u64, jetstream::Message>>,
    /// Set while a batch is waiting for Postgres to come back.
    db_away: AtomicBool,
    /// This process among its pools' members (crate::membership).
    instance: String,
}

impl Worker {
    pub fn new(settings: Arc<Settings>, db: PgPool, nats: async_nats::Client) -> Self {
        let js = jetstream::new(nats.clone());
        let subjects = Subjects::of(&settings);
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
                instance: uuid::Uuid::now_v7().to_string(),
            }),
        }
    }

    /// Gives the marker task a moment to write the last batch before the process exits.
    pub async fn flush_published(&self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Handles the pool's commands until `shutdown`: serves the partitions its share of the
    /// pool's members gives it (crate::membership), each pulled into the lanes by its own task
    /// (crate::pull). At shutdown it closes every pull, hands back what it holds but has not
    /// started, and finishes the batches under way.
    pub async fn run_pool(
        &self,
        pool: Pool,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let me = &self.inner;
        let stream = me
            .js
            .get_stream(me.subjects.command_stream())
            .await
            .context("command stream")?;
        let batch_size = me.settings.worker.batch_size;
        let every = Duration::from_millis(me.settings.worker.heartbeat_ms);
        let (hand_back_tx, hand_back) = watch::channel(false);
        // Unbounded queues, bounded all the same: the partition consumers' `max_ack_pending`
        // caps what this pool holds unacked, and a full lane must not stop the pulls.
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
                        hand_back.clone(),
                    ));
                    tasks.spawn(self.clone().run_settle(settle_rx, marks));
                    tx
                })
                .collect();
            (senders, tasks)
        };
        let keepalive = tokio::spawn(self.clone().keep_alive_while_db_away());
        tracing::info!(pool = pool.as_str(), lanes = lanes.len(), instance = %me.instance, "pool started");
        let mut served = Served::new(pool);
        let mut membership = None;
        if me.settings.worker.split_partitions {
            match Membership::join(
                me.nats.clone(),
                &me.subjects,
                pool,
                me.instance.clone(),
                every,
            )
            .await
            {
                Ok(mut m) => {
                    self.serve_share(&mut served, &mut m, &stream, &lanes, &mut shutdown)
                        .await;
                    membership = Some(m);
                }
                Err(e) => {
                    // Correct without the split, only without its gain.
                    tracing::error!(error = %e, "cannot follow the pool's members; serving every partition");
                    self.serve_all(&mut served, &stream, &lanes, &mut shutdown)
                        .await;
                }
            }
        } else {
            self.serve_all(&mut served, &stream, &lanes, &mut shutdown)
                .await;
        }
        // Close every pull (handing back what each had just been sent), and only then hand back
        // what the lanes hold: a command handed back earlier could come back to an open pull.
        // Only once all that is settled do the others hear we are leaving and take over.
        served.close_all().await;
        let _ = hand_back_tx.send(true);
        drop(lanes);
        while lane_tasks.join_next().await.is_some() {}
        if let Some(m) = membership {
            m.beat(&[], true).await;
        }
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
        hand_back: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(batch_size);
        let mut linger = Linger::new(Duration::from_millis(self.settings().worker.linger_ms));
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
            let wait = linger.after_take(received, tokio::time::Instant::now());
            if !wait.is_zero() && batch.len() < batch_size {
                let until = batch[0].pulled_at + wait;
                while batch.len() < batch_size {
                    let room = batch_size - batch.len();
                    match tokio::time::timeout_at(until, queue.recv_many(&mut batch, room)).await {
                        Ok(n) if n > 0 => linger.took_more(n),
                        _ => break,
                    }
                }
            }
            if *hand_back.borrow() {
                tracing::info!(commands = batch.len(), "handing back commands not started");
                for delivery in batch.drain(..) {
                    self.release(&delivery.msg);
                    crate::pull::hand_back(&delivery.msg).await;
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

    /// Publishes committed events and queues their published marks; on failure the relay
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

    pub(crate) fn hold(&self, msg: &jetstream::Message) {
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

    pub(crate) fn subjects(&self) -> &Subjects {
        &self.inner.subjects
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
