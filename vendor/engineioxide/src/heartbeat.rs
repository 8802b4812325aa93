//! ALLO-PATCH: the Engine.IO v4 heartbeat as a schedule, with no task and no channel of its own.
//!
//! Upstream gives every session a heartbeat task woken by a channel when a pong arrives. Here a
//! pong only sets a flag on the socket ([`crate::socket::Socket`]'s `heard`), and the schedule is
//! checked at its deadlines: by a websocket session's writer task, or, for a polling session
//! (which has no long-lived writer), by a small task. Deadlines sit on a process-wide grid so
//! that one timer wake-up serves every socket due in the same slot.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Heartbeat deadlines are rounded up to a multiple of this (or of a quarter of `ping_timeout`,
/// if shorter), counted from the first heartbeat of the process. Pings go out up to this much
/// later than `ping_interval` says and a missing pong is noticed up to this much later than
/// `ping_timeout`. A client gives up after `ping_interval + ping_timeout` without a ping, so the
/// step must stay well under `ping_timeout`.
const GRANULARITY: Duration = Duration::from_millis(500);

/// `t` rounded up to a grid of `step`.
fn on_grid(t: Instant, step: Duration) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let step = step.as_nanos().max(1);
    let slots = t.saturating_duration_since(epoch).as_nanos().div_ceil(step);
    epoch + Duration::from_nanos(u64::try_from(slots * step).unwrap_or(u64::MAX))
}

/// What a session must do when its heartbeat deadline passes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Send a ping now.
    Ping,
    /// The client answered the last ping; nothing to send.
    Alive,
    /// The client did not answer the last ping within `ping_timeout`: close the session.
    Dead,
}

/// One session's heartbeat: a ping every `interval`, a pong expected within `timeout`.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    /// The grid deadlines are rounded up to.
    step: Duration,
    /// When the last ping was (or the session opened).
    last_ping: Instant,
    awaiting_pong: bool,
    deadline: Instant,
}

impl Heartbeat {
    /// The schedule of a session that opens now: its first ping is due after `interval`, as
    /// the reference server sends it.
    pub(crate) fn new(interval: Duration, timeout: Duration) -> Self {
        let now = Instant::now();
        let step = GRANULARITY.min(timeout / 4);
        Self {
            interval,
            timeout,
            step,
            last_ping: now,
            awaiting_pong: false,
            deadline: on_grid(now + interval, step),
        }
    }

    /// When [`Heartbeat::due`] must next be called.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Called at (or after) the deadline: says what is due and moves the deadline on. `heard`
    /// is the socket's flag, set when a pong arrives; it is cleared before each ping, so an
    /// early or repeated pong cannot answer a later ping.
    pub(crate) fn due(&mut self, heard: &AtomicBool) -> Due {
        let now = Instant::now();
        if self.awaiting_pong {
            if !heard.swap(false, Ordering::AcqRel) {
                return Due::Dead;
            }
            self.awaiting_pong = false;
            let next_ping = self.last_ping + self.interval;
            if now < next_ping {
                self.deadline = on_grid(next_ping, self.step);
                return Due::Alive;
            }
            // The next ping is due already (`ping_timeout >= ping_interval`): send it now.
        }
        heard.store(false, Ordering::Release);
        self.awaiting_pong = true;
        self.last_ping = now;
        self.deadline = on_grid(now + self.timeout, self.step);
        Due::Ping
    }

    /// No ping while the session upgrades its transport (as upstream): try again an interval
    /// later.
    pub(crate) fn postpone(&mut self) {
        self.awaiting_pong = false;
        self.deadline = on_grid(Instant::now() + self.interval, self.step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pings_after_an_interval_then_checks_the_pong_after_the_timeout() {
        let heard = AtomicBool::new(true); // a pong before any ping answers nothing
        let mut hb = Heartbeat::new(Duration::from_secs(25), Duration::from_secs(20));
        let opened = Instant::now();
        assert!(hb.deadline() >= opened + Duration::from_secs(25));
        assert!(hb.deadline() <= opened + Duration::from_secs(25) + GRANULARITY);

        tokio::time::sleep_until(hb.deadline()).await;
        assert_eq!(hb.due(&heard), Due::Ping);
        let pinged = Instant::now();
        assert!(hb.deadline() >= pinged + Duration::from_secs(20));

        heard.store(true, Ordering::Release); // the pong
        tokio::time::sleep_until(hb.deadline()).await;
        assert_eq!(hb.due(&heard), Due::Alive);
        assert!(hb.deadline() >= pinged + Duration::from_secs(25));

        tokio::time::sleep_until(hb.deadline()).await;
        assert_eq!(hb.due(&heard), Due::Ping);
        tokio::time::sleep_until(hb.deadline()).await;
        assert_eq!(hb.due(&heard), Due::Dead, "no pong to the second ping");
    }

    /// A ping never comes so late that a client's `ping_interval + ping_timeout` runs out.
    #[tokio::test(start_paused = true)]
    async fn short_timeouts_get_a_finer_grid() {
        let (interval, timeout) = (Duration::from_millis(300), Duration::from_millis(300));
        let heard = AtomicBool::new(false);
        let mut hb = Heartbeat::new(interval, timeout);
        let opened = Instant::now();
        assert!(hb.deadline() <= opened + interval + timeout / 4);
        tokio::time::sleep_until(hb.deadline()).await;
        assert_eq!(hb.due(&heard), Due::Ping);
        let pinged = Instant::now();
        heard.store(true, Ordering::Release);
        tokio::time::sleep_until(hb.deadline()).await;
        // Checked after `ping_timeout`, which is not before the next ping is due: it goes now.
        assert_eq!(hb.due(&heard), Due::Ping);
        assert!(pinged.elapsed() <= interval + timeout / 4 + Duration::from_millis(1));
    }

    #[test]
    fn instants_within_one_slot_share_a_deadline() {
        let step = GRANULARITY;
        let start = on_grid(Instant::now(), step) + step / 10;
        let later = start + step / 5;
        assert_eq!(on_grid(start, step), on_grid(later, step));
        assert!(on_grid(start, step) >= later && on_grid(start, step) < start + step);
        assert!(on_grid(later + step, step) > on_grid(later, step));
    }
}
