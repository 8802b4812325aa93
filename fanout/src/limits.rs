//! Per-user bounds of this replica (`limits.fanout`): open sockets, and fixed-window counters
//! for `joinConversation` and `presence`. In memory on purpose: they bound what this process
//! holds and does for one client, which is this process's own business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allo_common::ids::UserId;

/// Open sockets per user on this replica.
#[derive(Clone, Default)]
pub struct SocketCounts(Arc<Mutex<HashMap<UserId, usize>>>);

/// One counted socket; gives its place back once, on [`SocketSlot::release`] or drop.
pub struct SocketSlot {
    counts: SocketCounts,
    user: UserId,
    released: std::sync::atomic::AtomicBool,
}

impl SocketCounts {
    /// Takes a place for `user`, or `None` when they already hold `max` sockets here.
    pub fn take(&self, user: &UserId, max: usize) -> Option<SocketSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let held = counts.entry(user.clone()).or_default();
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(SocketSlot {
            counts: self.clone(),
            user: user.clone(),
            released: Default::default(),
        })
    }
}

impl SocketSlot {
    pub fn release(&self) {
        if self
            .released
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = counts.get_mut(&self.user) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Requests per user per fixed window.
pub struct RateWindows {
    max: u32,
    window: Duration,
    counts: Mutex<HashMap<UserId, (Instant, u32)>>,
}

impl RateWindows {
    pub fn new(max: u32, window_secs: u64) -> Self {
        Self {
            max,
            window: Duration::from_secs(window_secs.max(1)),
            counts: Mutex::default(),
        }
    }

    /// Counts one request of `user`; `Err(retry_after_secs)` when the window's budget is spent.
    pub fn check(&self, user: &UserId) -> Result<(), u64> {
        let now = Instant::now();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() > 10_000 {
            // Forget users whose window is over, so the map holds only active users.
            counts.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let (start, used) = counts.entry(user.clone()).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            *start = now;
            *used = 0;
        }
        if *used >= self.max {
            let left = self.window.saturating_sub(now.duration_since(*start));
            return Err(left.as_secs() + u64::from(left.subsec_nanos() > 0));
        }
        *used += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_budget_then_says_when_to_retry() {
        let user = UserId::parse("alice").unwrap();
        let windows = RateWindows::new(2, 10);
        assert_eq!(windows.check(&user), Ok(()));
        assert_eq!(windows.check(&user), Ok(()));
        let retry = windows.check(&user).unwrap_err();
        assert!((1..=10).contains(&retry), "{retry}");
        assert_eq!(windows.check(&UserId::parse("bob").unwrap()), Ok(()));
    }

    #[test]
    fn a_released_socket_gives_its_place_back_once() {
        let user = UserId::parse("alice").unwrap();
        let counts = SocketCounts::default();
        let first = counts.take(&user, 2).unwrap();
        let _second = counts.take(&user, 2).unwrap();
        assert!(counts.take(&user, 2).is_none());
        first.release();
        first.release();
        let _third = counts.take(&user, 2).unwrap();
        assert!(counts.take(&user, 2).is_none());
    }
}
