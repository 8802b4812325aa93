//! What a socket holds: the conversations it joined (and is joining, bounded by
//! `limits.fanout.joined_per_socket`) and its typing rate.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use allo_common::ids::ConversationId;

/// Per-socket state kept in the socket's extensions (one allocation: a socket's fixed cost is
/// what limits how many one replica holds).
#[derive(Clone, Default)]
pub struct SocketState(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Conversations this socket joined (to leave their feeds on disconnect, to answer
    /// `presence`), and those whose join is under way (they count against
    /// `joined_per_socket` too). A feed takes a conversation out when the socket stops
    /// receiving it (left, removed, cut off).
    conversations: Mutex<Joined>,
    /// When this socket last signalled `typing` (rate limit).
    last_typing: Mutex<Option<Instant>>,
    /// The one token deadline of this socket that counts (`crate::token`): when the process's
    /// watcher looks at it next, in Unix seconds (0: none).
    token_due: AtomicI64,
    /// The token expiry it was last warned about (`tokenExpiring` is sent once per token).
    warned_for: AtomicI64,
}

#[derive(Default)]
struct Joined {
    joined: Conversations,
    joining: Conversations,
}

/// A set of conversations as a vector: a socket joins a few (at most `joined_per_socket`), and
/// most sockets one, which a vector holds in 64 bytes where a hash set took ~100 plus its
/// hasher's state; a scan of at most a few hundred ids is cheap.
#[derive(Default)]
struct Conversations(Vec<ConversationId>);

impl Conversations {
    fn contains(&self, conversation: &ConversationId) -> bool {
        self.0.contains(conversation)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it was not there yet.
    fn insert(&mut self, conversation: ConversationId) -> bool {
        let new = !self.contains(&conversation);
        if new {
            self.0.push(conversation);
        }
        new
    }

    /// Whether it was there; an emptied set gives its memory back.
    fn remove(&mut self, conversation: &ConversationId) -> bool {
        let Some(at) = self.0.iter().position(|c| c == conversation) else {
            return false;
        };
        self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        true
    }
}

/// A join under way; its place under `joined_per_socket` is given back when it is dropped.
pub struct Reservation {
    state: SocketState,
    conversation: ConversationId,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.state.with(|c| c.joining.remove(&self.conversation));
    }
}

impl SocketState {
    fn with<T>(&self, f: impl FnOnce(&mut Joined) -> T) -> T {
        // Every change is one set operation, so a poisoned lock still holds consistent sets.
        f(&mut self
            .0
            .conversations
            .lock()
            .unwrap_or_else(|p| p.into_inner()))
    }

    /// Holds a place for a join of `conversation`, unless the socket already has `max`
    /// (a conversation it joined already needs none).
    pub fn reserve(&self, conversation: ConversationId, max: usize) -> Option<Reservation> {
        let admitted = self.with(|c| {
            if c.joined.contains(&conversation) || c.joining.contains(&conversation) {
                return true;
            }
            if c.joined.len() + c.joining.len() >= max {
                return false;
            }
            c.joining.insert(conversation)
        });
        admitted.then(|| Reservation {
            state: self.clone(),
            conversation,
        })
    }

    /// The feed attached the socket.
    pub fn joined(&self, conversation: ConversationId) {
        self.with(|c| c.joined.insert(conversation));
    }

    /// The socket no longer receives `conversation`; returns whether it had joined it.
    pub fn left(&self, conversation: ConversationId) -> bool {
        self.with(|c| c.joined.remove(&conversation))
    }

    pub fn is_joined(&self, conversation: ConversationId) -> bool {
        self.with(|c| c.joined.contains(&conversation))
    }

    pub(crate) fn all_joined(&self) -> Vec<ConversationId> {
        self.with(|c| c.joined.0.clone())
    }

    /// The `typing` rate limit's clock.
    pub(crate) fn last_typing(&self) -> &Mutex<Option<Instant>> {
        &self.0.last_typing
    }

    /// Makes `due` the socket's token deadline; returns the one it replaces.
    pub(crate) fn set_token_due(&self, due: i64) -> i64 {
        self.0.token_due.swap(due, Ordering::AcqRel)
    }

    pub(crate) fn token_due(&self) -> i64 {
        self.0.token_due.load(Ordering::Acquire)
    }

    /// Records a warning about the token expiring at `expires_at`; false if already sent.
    pub(crate) fn warn_once(&self, expires_at: i64) -> bool {
        self.0.warned_for.swap(expires_at, Ordering::AcqRel) != expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_counts_once_against_the_bound_and_a_leave_gives_its_place_back() {
        let state = SocketState::default();
        let id = |raw: &str| ConversationId::parse(raw).expect("uuid");
        let a = id("00000000-0000-4000-8000-000000000001");
        let b = id("00000000-0000-4000-8000-000000000002");
        let first = state.reserve(a, 1).expect("room for one");
        assert!(state.reserve(b, 1).is_none(), "a join under way counts");
        state.joined(a);
        drop(first);
        assert!(
            state.reserve(a, 1).is_some(),
            "a joined conversation needs no place"
        );
        assert!(state.reserve(b, 1).is_none(), "the joined one counts");
        state.joined(a);
        assert_eq!(state.all_joined(), vec![a], "joined once");
        assert!(state.left(a));
        assert!(!state.left(a), "left once");
        assert!(state.reserve(b, 1).is_some());
    }
}
