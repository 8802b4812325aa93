//! The chaos run's verdict, computed only from what the clients saw ([`Record`], each
//! socket's [`crate::sio::SocketLog`]) and what Postgres holds (`commands`, `messages`,
//! `events`), never from Allo's own counters.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::chaos_load::{Record, Sent, User, first_deliveries};

/// One fault of the run: injected at `start`, repaired at `healed`, and every command
/// accepted before `healed` settled in Postgres at `drained`.
pub struct Phase {
    pub name: String,
    pub start: Instant,
    pub healed: Instant,
    pub drained: Instant,
}

/// The command ids the clients hold a 202 (or accepting ack) for, so far.
pub fn accepted_ids(record: &Record) -> Vec<uuid::Uuid> {
    let sent = record.sent.lock().expect("record");
    sent.iter()
        .filter_map(|s| s.command_id.as_deref()?.parse().ok())
        .collect()
}

/// Waits until every command in `ids` has a `commands` row (committed or rejected), riding
/// out a Postgres that is still coming back; returns when, or `None` after `within`.
pub async fn settled(db: &PgPool, ids: &[uuid::Uuid], within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let done: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM commands WHERE id = ANY($1)")
                .bind(ids)
                .fetch_one(db)
                .await;
        if done.is_ok_and(|n| n as usize == ids.len()) {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Waits until every socket has seen its conversation up to the last seq Postgres holds.
pub async fn sockets_caught_up(db: &PgPool, users: &[Arc<User>], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let last = last_seqs(db).await;
        if users.iter().all(|u| {
            u.socket.last_seq(&u.conversation) >= last.get(&u.conversation).copied().unwrap_or(0)
        }) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Each conversation's last committed seq (`conversation id -> seq`).
pub async fn last_seqs(db: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT id::text, last_seq FROM conversations")
        .fetch_all(db)
        .await
        .expect("conversations")
        .into_iter()
        .collect()
}

/// The run's numbers.
#[derive(Debug, Default)]
pub struct Table {
    pub sent: usize,
    pub users: usize,
    pub accepted: usize,
    pub committed: usize,
    pub rejected: usize,
    pub lost: usize,
    /// The first few lost or refused commands, to start looking.
    pub examples: Vec<String>,
    pub applied_twice: usize,
    pub refused_at_ingress: usize,
    pub socket_no_ack: usize,
    pub never_accepted: usize,
    pub retried: usize,
    pub postgres_seq_gaps: i64,
    pub socket_gaps: i64,
    pub socket_duplicates: usize,
    pub out_of_order: usize,
    pub deliveries: usize,
    pub reconnects: u32,
    /// Per fault: name, drain after repair (s), p99 POST -> first socket (ms), samples.
    pub faults: Vec<(String, f64, f64, usize)>,
}

impl Table {
    /// Judges the run; `floors` is each conversation's last seq before the load began.
    pub async fn compute(
        db: &PgPool,
        record: &Record,
        users: &[Arc<User>],
        floors: &HashMap<String, i64>,
        phases: &[Phase],
    ) -> Table {
        let sent: Vec<Sent> = record.sent.lock().expect("record").clone();
        let mut t = Table {
            sent: sent.len(),
            users: users.len(),
            ..Default::default()
        };
        let ids = accepted_ids(record);
        let status: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
            "SELECT id::text, status FROM commands WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(db)
        .await
        .expect("commands")
        .into_iter()
        .collect();
        let bodies: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT body, count(*) FROM messages WHERE body IS NOT NULL GROUP BY body",
        )
        .fetch_all(db)
        .await
        .expect("messages")
        .into_iter()
        .collect();
        for s in &sent {
            match (&s.command_id, s.refused) {
                (Some(id), _) => {
                    t.accepted += 1;
                    t.retried += usize::from(s.attempts > 1);
                    match status.get(id).map(String::as_str) {
                        Some("committed") => {
                            t.committed += 1;
                            // A message-creating command must have left its message.
                            if let Some(text) = &s.text {
                                match bodies.get(text).copied().unwrap_or(0) {
                                    0 => t.lose(s, "committed, no message"),
                                    1 => {}
                                    _ => t.applied_twice += 1,
                                }
                            }
                        }
                        Some(_) => t.rejected += 1,
                        None => t.lose(s, "no commands row"),
                    }
                }
                (None, Some(0)) => t.socket_no_ack += 1,
                (None, Some(_)) => {
                    t.refused_at_ingress += 1;
                    t.example(s, &format!("refused {:?}: {:?}", s.refused, s.note));
                }
                (None, None) => t.never_accepted += 1,
            }
        }
        // Any command with two events of one type was applied twice (whatever its kind).
        let twice: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT command_id, type FROM events WHERE command_id = ANY($1)
             GROUP BY command_id, type HAVING count(*) > 1) twice",
        )
        .bind(&ids)
        .fetch_one(db)
        .await
        .expect("events");
        t.applied_twice += twice as usize;
        t.postgres_seq_gaps = sqlx::query_scalar(
            "SELECT coalesce(sum(max - n), 0)::bigint FROM
             (SELECT max(seq) AS max, count(*) AS n FROM events GROUP BY conversation_id) c",
        )
        .fetch_one(db)
        .await
        .expect("seq gaps");
        t.judge_sockets(&last_seqs(db).await, users, floors);
        t.judge_faults(&sent, users, phases);
        t
    }

    fn lose(&mut self, s: &Sent, why: &str) {
        self.lost += 1;
        self.example(s, why);
    }

    fn example(&mut self, s: &Sent, why: &str) {
        if self.examples.len() < 8 {
            self.examples.push(format!(
                "{} {:?} {:?}: {why}",
                s.operation, s.text, s.command_id
            ));
        }
    }

    /// Gaps, duplicates and out-of-order deliveries of each socket in its conversation, over
    /// the seqs committed after the load began.
    fn judge_sockets(
        &mut self,
        last: &HashMap<String, i64>,
        users: &[Arc<User>],
        floors: &HashMap<String, i64>,
    ) {
        for user in users {
            let conv = &user.conversation;
            let floor = floors.get(conv).copied().unwrap_or(0);
            let log = user.socket.log.lock().expect("socket log");
            self.reconnects += log.reconnects;
            let mut seen = HashSet::new();
            let mut highest = floor;
            for d in log
                .deliveries
                .iter()
                .filter(|d| &d.conversation == conv && d.seq > floor)
            {
                self.deliveries += 1;
                if !seen.insert(d.seq) {
                    self.socket_duplicates += 1;
                } else if d.seq < highest {
                    self.out_of_order += 1;
                }
                highest = highest.max(d.seq);
            }
            let want = last.get(conv).copied().unwrap_or(0) - floor;
            self.socket_gaps += want - seen.len() as i64;
        }
    }

    fn judge_faults(&mut self, sent: &[Sent], users: &[Arc<User>], phases: &[Phase]) {
        let delivered = first_deliveries(users);
        for phase in phases {
            let mut latencies: Vec<Duration> = sent
                .iter()
                .filter(|s| s.first_try >= phase.start && s.first_try <= phase.drained)
                .filter_map(|s| Some(*delivered.get(s.text.as_ref()?)? - s.first_try))
                .collect();
            latencies.sort();
            let p99 = latencies
                .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
            let drain = (phase.drained - phase.healed).as_secs_f64();
            self.faults
                .push((phase.name.clone(), drain, p99, latencies.len()));
        }
    }

    /// The table as the run prints it.
    pub fn render(&self) -> String {
        let mut out = format!(
            "| chaos run: {} commands from {} users | |\n|---|---|\n",
            self.sent, self.users
        );
        let rows: [(&str, String); 16] = [
            ("accepted (202 or accepting ack)", self.accepted.to_string()),
            ("committed", self.committed.to_string()),
            ("rejected", self.rejected.to_string()),
            ("lost (must be 0)", self.lost.to_string()),
            ("applied twice (must be 0)", self.applied_twice.to_string()),
            ("socket gaps (must be 0)", self.socket_gaps.to_string()),
            (
                "socket duplicates (must be 0)",
                self.socket_duplicates.to_string(),
            ),
            (
                "out-of-order deliveries (must be 0)",
                self.out_of_order.to_string(),
            ),
            (
                "seq gaps in Postgres (must be 0)",
                self.postgres_seq_gaps.to_string(),
            ),
            ("accepted after a retry", self.retried.to_string()),
            (
                "refused by ingress (4xx)",
                self.refused_at_ingress.to_string(),
            ),
            (
                "socket commands without an ack (not resent)",
                self.socket_no_ack.to_string(),
            ),
            (
                "never accepted within 120 s",
                self.never_accepted.to_string(),
            ),
            ("socket deliveries checked", self.deliveries.to_string()),
            (
                "socket reconnects (resumed by seq)",
                self.reconnects.to_string(),
            ),
            ("faults", self.faults.len().to_string()),
        ];
        for (k, v) in rows {
            out += &format!("| {k} | {v} |\n");
        }
        out += "\n| fault | drain after repair (s) | p99 POST -> socket in fault window (ms) | samples |\n|---|---|---|---|\n";
        for (name, drain, p99, n) in &self.faults {
            out += &format!("| {name} | {drain:.1} | {p99:.0} | {n} |\n");
        }
        for example in &self.examples {
            out += &format!("- {example}\n");
        }
        out
    }
}
