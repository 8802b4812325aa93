//! The outbox relay. A worker publishes its events right after commit; if it dies in between,
//! the events sit in Postgres with no `published_at`. The relay publishes those once they are
//! older than a grace period, in (conversation, seq) order. Several processes may run it:
//! `FOR UPDATE SKIP LOCKED` gives each row to one of them.

use std::sync::Arc;
use std::time::Duration;

use allo_common::Settings;
use allo_common::event::{EventEnvelope, EventType};
use allo_common::ids::{CommandId, ConversationId, EventId, UserId};
use allo_common::subjects::Subjects;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::publish::Publisher;

/// Events republished per round; bounded so one round's transaction stays short.
const RELAY_BATCH: i64 = 500;

pub struct Relay {
    settings: Arc<Settings>,
    db: PgPool,
    publisher: Publisher,
}

type EventRow = (
    EventId,
    ConversationId,
    i64,
    String,
    Option<CommandId>,
    String,
    DateTime<Utc>,
    serde_json::Value,
);

impl Relay {
    pub fn new(settings: Arc<Settings>, db: PgPool, nats: async_nats::Client) -> Self {
        let subjects = Subjects::new(&settings.subject_prefix);
        let publisher = Publisher::new(async_nats::jetstream::new(nats), subjects);
        Self {
            settings,
            db,
            publisher,
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
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
        }
    }

    /// Publishes one batch of overdue events; returns how many.
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT id, conversation_id, seq, type, command_id, actor_id, at, data FROM events
             WHERE published_at IS NULL AND committed_at < now() - make_interval(secs => $1)
             ORDER BY conversation_id, seq LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.settings.worker.relay_grace_ms as f64 / 1000.0)
        .bind(RELAY_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(rows.len());
        for (event_id, conversation_id, seq, kind, command_id, actor, at, data) in rows {
            let (Some(kind), Ok(actor)) = (EventType::parse(&kind), UserId::parse(&actor)) else {
                tracing::error!(%event_id, "event row with unknown type or actor; skipped");
                continue;
            };
            events.push(EventEnvelope {
                event_id,
                kind,
                conversation_id,
                seq,
                command_id,
                actor,
                at,
                data,
            });
        }
        self.publisher.events(&events).await?;
        let ids: Vec<EventId> = events.iter().map(|e| e.event_id).collect();
        sqlx::query("UPDATE events SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(events.len())
    }
}
