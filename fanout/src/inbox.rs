//! A feed's inbox: the joins and typing signals socket handlers queue for it (bounded), and
//! the leaves (never refused), each with its own wake-up so the feed can keep its order of
//! priority (leaves first, commands after events).
//!
//! Two tokio mpsc channels did this before: 512 bytes of channel each (cache-line padded) plus
//! a first block of 32 slots allocated up front, ~2.1 KB per feed, and a process has a feed
//! per conversation its sockets joined (bench/README.md). This is a few hundred bytes, and the
//! command queue's buffer exists only while something is queued.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use socketioxide::socket::Sid;
use tokio::sync::Notify;

use crate::registry::FeedCommand;

/// Why a command was not queued.
pub(crate) enum Full {
    /// The queue holds its bound: the feed is not keeping up.
    Busy,
    /// The feed has ended: the command is handed back, for a new feed.
    Closed(FeedCommand),
}

pub(crate) struct Inbox {
    state: Mutex<State>,
    capacity: usize,
    /// A leave was queued.
    leaves_ready: Notify,
    /// A command was queued.
    commands_ready: Notify,
}

#[derive(Default)]
struct State {
    commands: VecDeque<FeedCommand>,
    leaves: Vec<Sid>,
    closed: bool,
}

impl Inbox {
    /// An inbox of at most `capacity` queued commands, and the guard its feed holds: when the
    /// feed ends (or panics) the guard closes the inbox, so a sender learns it must start
    /// another feed.
    pub(crate) fn new(capacity: usize) -> (Arc<Inbox>, InboxGuard) {
        let inbox = Arc::new(Inbox {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            leaves_ready: Notify::new(),
            commands_ready: Notify::new(),
        });
        (inbox.clone(), InboxGuard(inbox))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation is a single push, pop or swap: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a command without waiting.
    pub(crate) fn command(&self, command: FeedCommand) -> Result<(), Full> {
        let mut state = self.lock();
        if state.closed {
            return Err(Full::Closed(command));
        }
        if state.commands.len() >= self.capacity {
            return Err(Full::Busy);
        }
        state.commands.push_back(command);
        drop(state);
        self.commands_ready.notify_one();
        Ok(())
    }

    /// Queues a leave (never refused; dropped if the feed has ended, as it has no sockets).
    pub(crate) fn leave(&self, sid: Sid) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.leaves.push(sid);
        drop(state);
        self.leaves_ready.notify_one();
    }

    /// Whether a command is waiting.
    pub(crate) fn has_commands(&self) -> bool {
        !self.lock().commands.is_empty()
    }

    /// Waits until a leave may have been queued (a wake-up is kept if none is waiting).
    pub(crate) async fn leaves_ready(&self) {
        self.leaves_ready.notified().await;
    }

    /// Waits until a command may have been queued.
    pub(crate) async fn commands_ready(&self) {
        self.commands_ready.notified().await;
    }

    /// Every queued leave.
    pub(crate) fn take_leaves(&self) -> Vec<Sid> {
        std::mem::take(&mut self.lock().leaves)
    }

    /// The next command; if more wait, the feed is woken for them again (after what else is
    /// ready: it takes one command per turn).
    pub(crate) fn next_command(&self) -> Option<FeedCommand> {
        let mut state = self.lock();
        let command = state.commands.pop_front();
        let more = !state.commands.is_empty();
        if state.commands.is_empty() && state.commands.capacity() > 4 {
            state.commands = VecDeque::new();
        }
        drop(state);
        if more {
            self.commands_ready.notify_one();
        }
        command
    }
}

/// Held by the feed's task; closes the inbox when the task ends, however it ends. What is
/// still queued is dropped with it: a join's reply is dropped, and its handler answers
/// `unavailable`.
pub(crate) struct InboxGuard(Arc<Inbox>);

impl std::ops::Deref for InboxGuard {
    type Target = Inbox;
    fn deref(&self) -> &Inbox {
        &self.0
    }
}

impl Drop for InboxGuard {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.0.lock();
            state.closed = true;
            state.leaves.clear();
            std::mem::take(&mut state.commands)
        };
        drop(queued); // outside the lock: dropping a join's reply wakes its handler
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TypingSignal;
    use allo_common::ids::UserId;

    fn typing() -> FeedCommand {
        FeedCommand::Typing(Box::new(TypingSignal {
            sid: Sid::new(),
            user: UserId::parse("u").expect("user id"),
            typing: true,
        }))
    }

    /// Waits for a wake-up, failing instead of hanging if none comes.
    async fn woken(ready: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(std::time::Duration::from_secs(1), ready)
            .await
            .expect("the feed was not woken");
    }

    #[tokio::test]
    async fn commands_are_bounded_and_refused_once_the_feed_is_gone() {
        let (inbox, guard) = Inbox::new(2);
        assert!(inbox.command(typing()).is_ok());
        assert!(inbox.command(typing()).is_ok());
        assert!(matches!(inbox.command(typing()), Err(Full::Busy)));
        // Woken once for the two; each turn takes one and keeps the wake-up for the next.
        woken(guard.commands_ready()).await;
        assert!(guard.next_command().is_some());
        woken(guard.commands_ready()).await;
        assert!(guard.next_command().is_some());
        assert!(guard.next_command().is_none());
        assert!(!guard.has_commands());
        drop(guard);
        assert!(matches!(inbox.command(typing()), Err(Full::Closed(_))));
    }

    #[tokio::test]
    async fn leaves_are_never_refused_while_the_feed_runs() {
        let (inbox, guard) = Inbox::new(1);
        let (a, b) = (Sid::new(), Sid::new());
        inbox.leave(a);
        inbox.leave(b);
        woken(guard.leaves_ready()).await;
        assert_eq!(guard.take_leaves(), vec![a, b]);
        assert!(guard.take_leaves().is_empty());
    }
}
