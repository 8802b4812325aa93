//! Bounds on what one client may hold or ask of a fan-out replica (see README "Security
//! defaults"). Each is per replica: a client spread over replicas by the load balancer gets
//! each replica's budget, which still bounds what any one process holds for it.

use serde::{Deserialize, Serialize};

/// `limits.fanout`: sockets, joins, presence requests and the feeds' memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct FanoutLimits {
    /// Sockets one user may hold open on one replica (a few tabs and devices); past it the
    /// handshake is refused (`connect_error` `too_many_sockets`).
    pub sockets_per_user: usize,
    /// Conversations one socket may have joined at once; past it `joinConversation` is refused
    /// (`too_many_joined`) until it leaves one. Bounds the feeds one socket can make us hold.
    pub joined_per_socket: usize,
    /// `joinConversation` requests one user may make per `window_secs` (each can replay up to
    /// `fanout.replay_max` events from Postgres); past it `rate_limited` with `retryAfter`.
    pub joins_per_window: u32,
    /// `presence` requests one user may make per `window_secs` (each asks every replica over
    /// NATS); past it `rate_limited` with `retryAfter`.
    pub presence_per_window: u32,
    pub window_secs: u64,
    /// Commands (joins, typing) queued for one conversation's feed; past it a join is refused
    /// with `busy` and `retryAfter` instead of waiting on a conversation that is not keeping up.
    pub feed_queue: usize,
    /// Out-of-order events one feed holds while the gap before them cannot be filled (Postgres
    /// down). Past it later events are not held: they are read from the event log once it
    /// answers, so sockets still get every seq in order, later.
    pub feed_pending_max: usize,
}

impl Default for FanoutLimits {
    fn default() -> Self {
        Self {
            sockets_per_user: 16,
            joined_per_socket: 200,
            joins_per_window: 60,
            presence_per_window: 30,
            window_secs: 10,
            feed_queue: 256,
            feed_pending_max: 10_000,
        }
    }
}
