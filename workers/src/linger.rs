//! How long a lane waits for more commands before applying a small batch.
//!
//! A batch's cost in Postgres is mostly fixed (four round trips and a WAL flush), so a lane
//! applying batches of one or two at a busy moment spends several times the CPU per command
//! of one applying ten (bench/openloop.sh: ~0.5 ms of Postgres CPU per command at 1,000
//! msgs/s in batches of two, ~0.07 ms while draining in batches of 64). Waiting a few
//! milliseconds under load buys larger batches; waiting when nothing else is coming buys only
//! latency. So a lane waits only while its recent arrival rate says another command is due
//! within the wait.

use std::time::Duration;

use tokio::time::Instant;

/// How far back the arrival rate looks: a take this long ago counts 1/e of a new one.
const TAU: Duration = Duration::from_millis(50);

/// A lane's recent arrivals and the longest it may wait for more.
#[derive(Debug)]
pub(crate) struct Linger {
    max: Duration,
    /// Commands taken, each weighted by `exp(-age / TAU)`: `recent / TAU` is the rate.
    recent: f64,
    last_take: Option<Instant>,
}

impl Linger {
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            max,
            recent: 0.0,
            last_take: None,
        }
    }

    /// Records that the lane took `taken` commands at `now` (everything that arrived since its
    /// last take), and answers how long it should wait for more before applying them: `max`
    /// when at least one more is expected within it, else zero.
    pub(crate) fn after_take(&mut self, taken: usize, now: Instant) -> Duration {
        if let Some(last) = self.last_take {
            let age = now.saturating_duration_since(last).as_secs_f64();
            self.recent *= (-age / TAU.as_secs_f64()).exp();
        }
        self.recent += taken as f64;
        self.last_take = Some(now);
        let expected_within_max = self.recent * self.max.as_secs_f64() / TAU.as_secs_f64();
        if expected_within_max >= 1.0 {
            self.max
        } else {
            Duration::ZERO
        }
    }

    /// Counts commands that arrived during the wait, so the rate sees them too.
    pub(crate) fn took_more(&mut self, taken: usize) {
        self.recent += taken as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_millis(8);

    /// Feeds `takes` takes of `per_take` commands, `gap` apart; the last answer.
    fn wait_after(takes: usize, per_take: usize, gap: Duration) -> Duration {
        let mut linger = Linger::new(MAX);
        let mut now = Instant::now();
        let mut wait = Duration::ZERO;
        for _ in 0..takes {
            wait = linger.after_take(per_take, now);
            now += gap;
        }
        wait
    }

    #[test]
    fn a_quiet_lane_applies_at_once() {
        // 20 commands/s: one due every 50 ms, none within 8 ms.
        assert_eq!(wait_after(50, 1, Duration::from_millis(50)), Duration::ZERO);
        assert_eq!(
            wait_after(1, 1, Duration::ZERO),
            Duration::ZERO,
            "no history yet"
        );
    }

    #[test]
    fn a_busy_lane_waits_for_a_larger_batch() {
        // 1,000 commands/s arriving two per take, 2 ms apart: eight more due within 8 ms.
        assert_eq!(wait_after(50, 2, Duration::from_millis(2)), MAX);
    }

    #[test]
    fn a_lane_stops_waiting_once_the_load_stops() {
        let mut linger = Linger::new(MAX);
        let mut now = Instant::now();
        for _ in 0..50 {
            linger.after_take(2, now);
            now += Duration::from_millis(2);
        }
        // A second of silence, then one command: what came before no longer counts.
        now += Duration::from_secs(1);
        assert_eq!(linger.after_take(1, now), Duration::ZERO);
    }
}
