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
//! Joins are cheap here: the socket handler reads a resuming socket's replay from the log
//! itself (`crate::join`), so no replay runs in this task and delays the room. The feed then
//! attaches the socket at the replay's last seq, catching it up from the events it delivered
//! recently (or sending the handler back to the log when it no longer holds them), and decides
//! membership at its own seq: a `participantLeft`/`participantRemoved` it delivered after the
//! handler's check refuses the join.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use allo_common::event::{EventEnvelope, EventType};
use allo_common::ids::{ConversationId, UserId};
use allo_common::trace;
use futures::StreamExt;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::time::Instant;

use crate::inbox::InboxGuard;
use crate::registry::{FeedContext, Feeds, Registry};
use crate::replay::{cut_off, load_events};

/// Events fetched from the log per query when filling a gap.
const LOG_PAGE: i64 = 200;
/// Quiet time after which the feed checks the log for a lost last event.
const TAIL_CHECK: Duration = Duration::from_secs(1);
/// Delivered events kept to catch a joining socket up from its replay's end (events committed
/// while its replay was read); further behind, the handler reads the log again.
const RECENT: usize = 128;

pub(crate) struct Member {
    pub(crate) socket: SocketRef,
    pub(crate) user: UserId,
    /// Events up to this seq are not sent to this socket (it has them).
    pub(crate) floor: i64,
    /// The seq at which membership was checked: a departure at or before it is already known
    /// not to concern this socket (the user came back after it).
    pub(crate) admitted_at: i64,
}

/// A delivered event, encoded once.
pub(crate) struct Recent {
    pub(crate) seq: i64,
    pub(crate) kind: EventType,
    pub(crate) payload: Arc<RawValue>,
}

pub(crate) struct Feed {
    pub(crate) ctx: Arc<FeedContext>,
    pub(crate) conversation: ConversationId,
    events: async_nats::Subscriber,
    signals: async_nats::Subscriber,
    /// The conversation's last seq when this feed subscribed: it knows nothing before it.
    pub(crate) started_at: i64,
    pub(crate) delivered: i64,
    pending: BTreeMap<i64, EventEnvelope>,
    gap_deadline: Option<Instant>,
    tail_check: Option<Instant>,
    /// A join sent back for another round (`Stale`, `Behind`) keeps a memberless feed alive
    /// until then, so its next round finds this feed, not a new one that starts later still.
    pub(crate) linger: Option<Instant>,
    pub(crate) members: HashMap<Sid, Member>,
    pub(crate) recent: VecDeque<Recent>,
    /// Each user's latest membership change this feed delivered: (seq, member after it).
    pub(crate) changes: HashMap<UserId, (i64, bool)>,
}

impl Feed {
    /// Starts the feed and runs it; if it cannot start, the joins queued for it are answered
    /// (their handlers see the reply dropped and refuse with `unavailable`).
    pub(crate) async fn launch(
        ctx: Arc<FeedContext>,
        conversation: ConversationId,
        id: u64,
        inbox: InboxGuard,
        registry: Registry,
    ) {
        // The feed's task lives as long as the conversation has sockets here, and is as large
        // as its largest state: the start-up and every handler that awaits are boxed (heap
        // only while they run), and so is the feed itself, which the task would otherwise
        // hold twice (argument and binding). Task cell 2,560 → 768 bytes per feed, by
        // `-Zprint-type-sizes` (bench/README.md).
        match Box::pin(Feed::start(ctx, conversation)).await {
            Ok(feed) => feed.run(id, inbox, registry).await,
            Err(e) => {
                tracing::warn!(error = %e, %conversation, "feed did not start");
                Feeds::unregister(&registry, conversation, id);
            }
        }
    }

    /// Subscribes first, then reads where the conversation stands: every event after that
    /// point arrives on the subscription, and those at or before it are dropped as known.
    async fn start(
        ctx: Arc<FeedContext>,
        conversation: ConversationId,
    ) -> Result<Box<Feed>, String> {
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
        Ok(Box::new(Feed {
            ctx,
            conversation,
            events,
            signals,
            started_at: delivered,
            delivered,
            pending: BTreeMap::new(),
            gap_deadline: None,
            tail_check: None,
            linger: None,
            members: HashMap::new(),
            // Grows with what the conversation delivers: most joined conversations are quiet,
            // and 128 slots up front were 4 KB per feed.
            recent: VecDeque::new(),
            changes: HashMap::new(),
        }))
    }

    async fn run(mut self: Box<Self>, id: u64, inbox: InboxGuard, registry: Registry) {
        metrics::gauge!("allo_feeds_active").increment(1.0);
        let far = || Instant::now() + Duration::from_secs(3600);
        loop {
            let deadline = [self.gap_deadline, self.tail_check, self.linger]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(far);
            tokio::select! {
                // Leaves first: a socket that left must stop receiving before anything else.
                biased;
                () = inbox.leaves_ready() => {
                    for sid in inbox.take_leaves() {
                        Box::pin(self.on_leave(sid)).await;
                    }
                }
                Some(msg) = self.events.next() => {
                    log_trace(&msg);
                    match serde_json::from_slice::<EventEnvelope>(&msg.payload) {
                        Ok(event) => self.on_event(event),
                        Err(e) => tracing::warn!(error = %e, subject = %msg.subject, "undecodable event dropped"),
                    }
                }
                Some(msg) = self.signals.next() => Box::pin(self.on_signal(msg)).await,
                () = inbox.commands_ready() => {
                    if let Some(command) = inbox.next_command() {
                        Box::pin(self.on_command(command)).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => Box::pin(self.on_timer()).await,
            }
            // Unsubscribe on last leave, unless a join is already queued for us.
            if self.linger.is_some_and(|l| l <= Instant::now()) {
                self.linger = None;
            }
            let lingering = self.linger.is_some();
            if self.members.is_empty()
                && !lingering
                && registry.retire(self.conversation, id, &inbox)
            {
                break;
            }
        }
        metrics::gauge!("allo_feeds_active").decrement(1.0);
    }

    fn on_event(&mut self, event: EventEnvelope) {
        if event.seq <= self.delivered {
            return; // already delivered (a republish, or before this feed started)
        }
        let past_bound = self.pending.len() >= self.ctx.limits.feed_pending_max.max(1);
        let fresh = self.pending.insert(event.seq, event).is_none();
        if fresh && past_bound {
            // Bounded memory while the gap cannot be filled (Postgres down): the latest held
            // event is let go; the log serves it after the gap (a later gap fill or the tail
            // check), so sockets still get every seq in order.
            self.pending.pop_last();
            metrics::counter!("allo_feed_pending_dropped_total").increment(1);
        }
        self.drain();
        if !self.pending.is_empty() && self.gap_deadline.is_none() {
            self.gap_deadline =
                Some(Instant::now() + Duration::from_millis(self.ctx.settings.reorder_window_ms));
        }
    }

    /// Delivers pending events while they continue the sequence.
    fn drain(&mut self) {
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
        self.drain();
    }

    /// Sends one event to every member that does not have it yet. The payload is encoded once;
    /// a socket whose buffer is full is a slow consumer and is disconnected (it resumes with
    /// its `lastSeq`), so memory stays bounded.
    fn deliver(&mut self, event: &EventEnvelope) {
        self.delivered = event.seq;
        let Ok(payload) = serde_json::value::to_raw_value(&event.socket_payload()) else {
            return;
        };
        let payload: Arc<RawValue> = Arc::from(payload);
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
                self.forget_socket(&member.socket);
                cut_off(member.socket);
            }
        }
        self.track_membership(event);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent {
            seq: event.seq,
            kind: event.kind,
            payload,
        });
    }

    /// Who left or was removed stops receiving at once (after seeing that event), and the feed
    /// remembers it to refuse a join checked before it.
    fn track_membership(&mut self, event: &EventEnvelope) {
        let member = match event.kind {
            EventType::ParticipantJoined => true,
            EventType::ParticipantLeft | EventType::ParticipantRemoved => false,
            _ => return,
        };
        let Some(user) = event.data["userID"].as_str() else {
            return;
        };
        let Ok(user) = UserId::parse(user) else {
            return;
        };
        if !member {
            let departed: Vec<Sid> = self
                .members
                .iter()
                .filter(|(_, m)| m.user == user && event.seq > m.admitted_at)
                .map(|(sid, _)| *sid)
                .collect();
            for sid in departed {
                if let Some(m) = self.members.remove(&sid) {
                    self.forget_socket(&m.socket);
                }
            }
        }
        self.changes.insert(user, (event.seq, member));
    }

    /// The socket is no longer in this conversation: its `presence` and `typing` are refused
    /// and its slot under `joined_per_socket` is free again.
    pub(crate) fn forget_socket(&self, socket: &SocketRef) {
        if let Some(state) = socket.extensions.get::<crate::socket::SocketState>() {
            state.left(self.conversation);
        }
    }
}

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
