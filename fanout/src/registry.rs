//! The feeds of this process: one per conversation a local socket joined, found through a
//! registry that is never locked across an await.
//!
//! Socket handlers talk to a feed through its inbox (`crate::inbox`): a bounded queue for joins
//! and typing (`limits.fanout.feed_queue`; a full queue is refused at once with `busy`, so a
//! conversation that is not keeping up delays nobody else) and an unbounded list of leaves (one
//! per joined conversation of a socket, so bounded by `limits.fanout.joined_per_socket`), which
//! must never be dropped: a socket that left must stop receiving.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use allo_common::config::{FanoutLimits, FanoutSettings};
use allo_common::ids::{ConversationId, UserId};
use allo_common::subjects::Subjects;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::feed::Feed;
use crate::inbox::{Full, Inbox};

/// What every feed of the process shares.
pub struct FeedContext {
    pub db: PgPool,
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub settings: FanoutSettings,
    pub limits: FanoutLimits,
    /// This process, in signals, so a replica can tell its own typing echo.
    pub replica: String,
}

/// A socket asking to be attached to a feed. The socket handler has checked membership in
/// Postgres and replayed what the socket missed; the feed decides at its own seq.
pub struct JoinRequest {
    pub socket: SocketRef,
    pub user: UserId,
    /// The conversation's `last_seq` in the snapshot in which `user` was a participant.
    pub checked_at: i64,
    /// The socket already has every event up to this seq (its replay), or `None` for a join
    /// without `lastSeq` (live events only).
    pub has_upto: Option<i64>,
    /// The first seq the user may read (history visibility).
    pub history_floor: i64,
    pub reply: oneshot::Sender<JoinOutcome>,
}

/// The feed's answer to a [`JoinRequest`].
#[derive(Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Attached: the socket gets every event after `last_seq`.
    Joined { last_seq: i64 },
    /// The feed saw the user leave or be removed after the handler's check.
    NotMember,
    /// The handler's check is older than this feed: check again.
    Stale,
    /// The feed is further than the socket's replay and no longer holds the events between:
    /// replay up to `upto` from the log and ask again.
    Behind { upto: i64 },
    /// The catch-up did not fit the socket's send buffer (the handler cuts the socket off).
    SlowConsumer,
}

/// Boxed, so that a queued command is a pointer wide.
pub enum FeedCommand {
    Join(Box<JoinRequest>),
    Typing(Box<TypingSignal>),
}

/// A socket's `typing` signal for the feed to relay.
pub struct TypingSignal {
    pub sid: Sid,
    pub user: UserId,
    pub typing: bool,
}

/// Why a command did not reach a feed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The feed's queue is full: it is not keeping up; try again later.
    Busy,
    /// Typing for a conversation this process has no feed of.
    NoFeed,
}

#[derive(Clone)]
struct FeedHandle {
    /// Tells feeds apart when one ends and another starts for the same conversation.
    id: u64,
    inbox: Arc<Inbox>,
}

/// The registry: conversation → its feed's inbox. A std mutex, held only for map and inbox
/// operations, never across an await.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<HashMap<ConversationId, FeedHandle>>>);

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConversationId, FeedHandle>> {
        // A panic while holding it leaves a map that is still consistent (every operation on
        // it is a single insert/remove), so a poisoned lock is used as is.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the feed `id` of `conversation` if nothing is queued for it (checked under the
    /// lock senders use, so no command can slip in between); returns whether it was removed.
    pub(crate) fn retire(&self, conversation: ConversationId, id: u64, inbox: &Inbox) -> bool {
        let mut registry = self.lock();
        if inbox.has_commands() {
            return false;
        }
        if registry.get(&conversation).is_some_and(|h| h.id == id) {
            registry.remove(&conversation);
        }
        true
    }
}

/// The feeds of this process.
pub struct Feeds {
    registry: Registry,
    ctx: Arc<FeedContext>,
    next_id: AtomicU64,
}

impl Feeds {
    pub fn new(ctx: FeedContext) -> Self {
        Self {
            registry: Registry::default(),
            ctx: Arc::new(ctx),
            next_id: AtomicU64::new(0),
        }
    }

    pub fn context(&self) -> &FeedContext {
        &self.ctx
    }

    /// Queues a command for the conversation's feed without waiting, starting the feed (and
    /// its NATS subscriptions, in its own task) on a join if this process has none.
    pub fn command(
        &self,
        conversation: ConversationId,
        command: FeedCommand,
    ) -> Result<(), Refused> {
        let mut registry = self.registry.lock();
        let mut command = command;
        if let Some(handle) = registry.get(&conversation) {
            match handle.inbox.command(command) {
                Ok(()) => return Ok(()),
                Err(Full::Busy) => {
                    metrics::counter!("allo_feed_busy_total").increment(1);
                    return Err(Refused::Busy);
                }
                // The feed ended; start another.
                Err(Full::Closed(back)) => command = back,
            }
        }
        if matches!(command, FeedCommand::Typing(_)) {
            return Err(Refused::NoFeed);
        }
        let (inbox, guard) = Inbox::new(self.ctx.limits.feed_queue);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if inbox.command(command).is_err() {
            return Err(Refused::Busy); // a fresh inbox has room; unreachable in practice
        }
        registry.insert(conversation, FeedHandle { id, inbox });
        drop(registry);
        let ctx = self.ctx.clone();
        let registry = self.registry.clone();
        tokio::spawn(Feed::launch(ctx, conversation, id, guard, registry));
        Ok(())
    }

    /// Tells the conversation's feed that a socket left (never dropped, never waits).
    pub fn leave(&self, conversation: ConversationId, sid: Sid) {
        if let Some(handle) = self.registry.lock().get(&conversation) {
            handle.inbox.leave(sid);
        }
    }

    /// Tells every feed a socket is gone.
    pub fn forget(&self, sid: Sid, conversations: &[ConversationId]) {
        for conversation in conversations {
            self.leave(*conversation, sid);
        }
    }

    /// Removes a feed that could not start, if it is still the registered one.
    pub(crate) fn unregister(registry: &Registry, conversation: ConversationId, id: u64) {
        let mut map = registry.lock();
        if map.get(&conversation).is_some_and(|h| h.id == id) {
            map.remove(&conversation);
        }
    }
}
