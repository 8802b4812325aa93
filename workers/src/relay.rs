//! The outbox relay. A worker publishes its events right after commit; if it dies in between,
//! the events sit in Postgres's `event_outbox`. The relay publishes those once they are
//! older than a grace period, in (conversation, seq) order. Several processes may run it:
//! `FOR UPDATE SKIP LOCKED` gives each row to one of them.

use std::sync::Arc;
use std::time::Duration;

use allo_common::Settings;
use allo_common::event::EventEnvelope;
use allo_common::subjects::Subjects;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::apply::mark_published;
use crate::publish::Publisher;
use crate::stream_erasure::StreamEraser;

/// Events republished per round; bounded so one round's transaction stays short.
const RELAY_BATCH: i64 = 500;

pub struct Relay {
    settings: Arc<Settings>,
    db: PgPool,
    publisher: Publisher,
    /// Deletes erased events' copies from the stream, in the same rounds.
    eraser: StreamEraser,
}

impl Relay {
    pub fn new(settings: Arc<Settings>, db: PgPool, nats: async_nats::Client) -> Self {
        let subjects = Subjects::of(&settings);
        let js = async_nats::jetstream::new(nats);
        let eraser = StreamEraser::new(settings.clone(), db.clone(), js.clone());
        let publisher = Publisher::new(js, subjects);
        Self {
            settings,
            db,
            publisher,
            eraser,
        }
    }

    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let interval = Duration::from_millis(self.settings.worker.relay_interval_ms);
        loop {
            match self.relay_once().await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("allo_events_relayed_total").increment(n as u64);
                    tracing::info!(events = n, "relayed unpublished events");
                }
                Err(e) => tracing::warn!(error = %e, "relay round failed; will retry"),
            }
            // After the relay, so a copy it just published of an erased event goes too.
            if let Err(e) = self.eraser.erase_all().await {
                tracing::warn!(error = %e, "stream erasure round failed; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
        }
    }

    /// Publishes one batch of overdue events; returns how many. Each goes out as reads serve
    /// it (`event_json`: erased content already scrubbed, a hidden message's redacted), and
    /// its stream sequence is recorded for erasure.
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        let rows: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT event_json(e) FROM event_outbox o JOIN events e ON e.id = o.event_id
             WHERE o.committed_at < now() - make_interval(secs => $1)
             ORDER BY o.conversation_id, o.seq LIMIT $2 FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(self.settings.worker.relay_grace_ms as f64 / 1000.0)
        .bind(RELAY_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            match serde_json::from_value::<EventEnvelope>(row) {
                Ok(event) => events.push(event),
                Err(e) => tracing::error!(error = %e, "unreadable event row; skipped"),
            }
        }
        let seqs = self.publisher.events(&events).await?;
        let marks: Vec<_> = events.iter().map(|e| e.event_id).zip(seqs).collect();
        mark_published(&mut *tx, &marks).await?;
        tx.commit().await?;
        Ok(events.len())
    }
}
