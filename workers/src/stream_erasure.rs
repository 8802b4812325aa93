//! Erasure on the event stream. Deleting, unsending, expiring or removing a message scrubs its
//! content from Postgres in the erasing command's transaction and queues its content events in
//! `stream_erasures` (hiding one queues them too: the stream is not a place a hidden message's
//! text may stay). This module deletes the queued events' stream copies by the stream sequence
//! their published mark recorded (`event_stream_seqs`), after that transaction committed.
//!
//! An event that was not yet on the stream when it was erased is deleted once its mark is
//! written: the lane's settle task may still publish the copy it holds in memory, but it
//! records that copy's sequence like any other, and the next round deletes it. The relay only
//! ever publishes the scrubbed row. NATS deletes with a secure erase (the stored bytes are
//! overwritten), and a copy that is already gone (aged out, deleted before) counts as done.

use std::sync::Arc;

use allo_common::Settings;
use allo_common::ids::EventId;
use allo_common::subjects::Subjects;
use async_nats::jetstream::{self, ErrorCode, stream::DeleteMessageErrorKind};
use futures::StreamExt;
use sqlx::PgPool;

/// Stream copies deleted per round; bounded so a round's transaction stays short.
const ERASE_BATCH: i64 = 500;

/// Deletes in flight at once: each is one JetStream API request, and a round of them pipelined
/// costs about what one costs.
const ERASE_CONCURRENCY: usize = 32;

pub struct StreamEraser {
    settings: Arc<Settings>,
    db: PgPool,
    js: jetstream::Context,
    subjects: Subjects,
}

impl StreamEraser {
    pub fn new(settings: Arc<Settings>, db: PgPool, js: jetstream::Context) -> Self {
        let subjects = Subjects::of(&settings);
        Self {
            settings,
            db,
            js,
            subjects,
        }
    }

    /// Runs rounds until nothing deletable is left; returns how many copies were deleted.
    pub async fn erase_all(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let n = self.erase_once().await?;
            total += n;
            if n < ERASE_BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// One round: the queued events whose stream sequence is known, deleted from the stream
    /// and then from the queue. Several processes may run it (`SKIP LOCKED`). Entries older
    /// than the stream's max age are dropped: their copies aged out (or never got a mark).
    pub async fn erase_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "DELETE FROM stream_erasures WHERE requested_at < now() - make_interval(secs => $1)",
        )
        .bind(self.settings.jetstream.event_max_age_secs as f64)
        .execute(&mut *tx)
        .await?;
        let due: Vec<(EventId, i64)> = sqlx::query_as(
            "SELECT x.event_id, s.stream_seq FROM stream_erasures x
             JOIN event_stream_seqs s ON s.event_id = x.event_id
             LIMIT $1 FOR UPDATE OF x SKIP LOCKED",
        )
        .bind(ERASE_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let stream = self
            .js
            .get_stream_no_info(self.subjects.event_stream())
            .await?;
        let started = std::time::Instant::now();
        let results: Vec<(EventId, bool)> = futures::stream::iter(due)
            .map(|(event, seq)| {
                let stream = &stream;
                async move { (event, delete(stream, seq).await) }
            })
            .buffer_unordered(ERASE_CONCURRENCY)
            .collect()
            .await;
        let done: Vec<EventId> = results
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(e, _)| *e)
            .collect();
        metrics::histogram!("allo_stream_erase_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("allo_stream_erased_total").increment(done.len() as u64);
        sqlx::query("DELETE FROM stream_erasures WHERE event_id = ANY($1)")
            .bind(&done)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.len())
    }
}

/// Deletes one stream message; true when it is gone (now or before).
async fn delete(stream: &jetstream::stream::Stream<()>, seq: i64) -> bool {
    let Ok(seq) = u64::try_from(seq) else {
        return true;
    };
    match stream.delete_message(seq).await {
        Ok(_) => true,
        Err(e) => match e.kind() {
            DeleteMessageErrorKind::JetStream(js)
                if js.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
            {
                true
            }
            _ => {
                tracing::warn!(error = %e, seq, "stream copy not deleted; will retry");
                false
            }
        },
    }
}
