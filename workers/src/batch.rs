//! One lane's batch, start to end: set aside what cannot be applied (undecodable, or out of
//! deliveries) → apply the rest in one transaction → publish the batch's events together →
//! publish outcomes and notices → ack each. Acking after the publish is safe either way: an
//! unpublished committed event is the relay's job, and a redelivered command finds its
//! `commands` row and has no second effect.

use std::time::Duration;

use allo_common::command::CommandEnvelope;
use allo_common::event::UserNotice;
use allo_common::ids::CommandId;
use allo_common::trace::{self, TraceContext};
use async_nats::jetstream::{self, AckKind};
use std::collections::HashMap;
use tracing::Instrument;

use crate::apply::{Applied, BatchResults, PublishedMark};
use crate::error::is_transient;
use crate::failures::failure_text;
use crate::pool::{Delivery, Worker};

/// A lane's published events not yet marked in Postgres: filled by its settle task, taken
/// by its next batch.
pub(crate) type Marks = std::sync::Arc<std::sync::Mutex<Vec<PublishedMark>>>;

/// A committed batch, waiting to be told to NATS.
pub(crate) struct Settlement {
    settled: Vec<(jetstream::Message, CommandEnvelope, Applied)>,
    /// How long the batch took to apply (for the apply-latency histogram).
    elapsed: f64,
}

pub(crate) fn take_marks(marks: &Marks) -> Vec<PublishedMark> {
    marks
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default()
}

fn return_marks(marks: &Marks, events: Vec<PublishedMark>) {
    if let Ok(mut m) = marks.lock() {
        m.extend(events);
    }
}

/// Longest pause between retries while Postgres is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Worker {
    /// Applies a lane's deliveries (in stream order) in one transaction and returns what is
    /// left to tell NATS; commands that failed on their own are nak'ed here. Postgres
    /// unreachable: keep every command (progress acks) and retry the batch. The lane's
    /// published events not yet marked ride on this batch's transaction.
    pub(crate) async fn apply_deliveries(
        &self,
        batch: Vec<Delivery>,
        marks: &Marks,
    ) -> Option<Settlement> {
        let max_deliver = self.settings().jetstream.max_deliver;
        let mut work = Vec::with_capacity(batch.len());
        for Delivery {
            msg,
            envelope,
            delivered,
            ..
        } in batch
        {
            match envelope {
                Err(why) => self.dead_letter(&msg, None, delivered, &why).await,
                Ok(envelope) if delivered > max_deliver => {
                    // What its sender reads; the dead letter keeps the recorded last error.
                    let why = format!("failed on {} deliveries", delivered - 1);
                    self.dead_letter(&msg, Some(&envelope), delivered, &why)
                        .await;
                }
                Ok(envelope) => work.push((msg, envelope, delivered)),
            }
        }
        if work.is_empty() {
            return None;
        }
        metrics::histogram!("allo_batch_size").record(work.len() as f64);
        let envelopes: Vec<&CommandEnvelope> = work.iter().map(|(_, e, _)| e).collect();
        let started = std::time::Instant::now();
        let published = take_marks(marks);
        let (results, marked) = self.apply_with_retry(&envelopes, &work, &published).await;
        if !marked {
            return_marks(marks, published);
        }
        let elapsed = started.elapsed().as_secs_f64();

        let mut settled = Vec::with_capacity(work.len());
        let mut failed = Vec::new();
        let mut recovered = Vec::new();
        for ((msg, envelope, delivered), result) in work.into_iter().zip(results) {
            match result {
                Ok(applied) => {
                    if delivered > 1 {
                        recovered.push(envelope.command_id);
                    }
                    settled.push((msg, envelope, applied));
                }
                Err(e) => {
                    tracing::error!(error = %e, command_id = %envelope.command_id, delivered, "command failed; will be redelivered");
                    failed.push((msg, envelope.command_id, failure_text(&e), delivered));
                }
            }
        }
        self.clear_failures(&recovered).await;
        // Recorded before the nak, so the delivery that dead-letters a command finds its error.
        let errors: Vec<_> = failed
            .iter()
            .map(|(_, id, error, delivered)| (*id, error.clone(), *delivered))
            .collect();
        self.record_failures(&errors).await;
        for (msg, _, _, delivered) in failed {
            let delay = Duration::from_secs(1 << delivered.clamp(0, 5));
            self.release(&msg);
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Some(Settlement { settled, elapsed })
    }

    /// Tells NATS what a committed batch did: every event of the batch in one pipelined
    /// publish, in batch (so per-conversation seq) order, then outcomes and notices, then an
    /// ack per command, after its events are on the stream. Runs beside the lane, so the lane
    /// applies its next batch meanwhile; one settle task per lane keeps the order.
    pub(crate) async fn settle(&self, settlement: Settlement, marks: &Marks) {
        let Settlement { settled, elapsed } = settlement;
        let events: Vec<_> = settled
            .iter()
            .filter_map(|(_, _, applied)| match applied {
                Applied::Committed { events, .. } => Some(events.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        // Each command's events continue its trace: one hop further than the ingress.
        let traces: HashMap<CommandId, TraceContext> = settled
            .iter()
            .map(|(msg, envelope, _)| {
                let (_, trace) = trace::from_headers(msg.headers.as_ref());
                let trace = trace.map_or_else(TraceContext::start, |t| t.child());
                (envelope.command_id, trace)
            })
            .collect();
        let published = self
            .publisher()
            .events_traced(&events, |command| traces.get(&command).copied());
        match published.await {
            Ok(seqs) => return_marks(marks, events.iter().map(|e| e.event_id).zip(seqs).collect()),
            Err(e) => tracing::warn!(error = %e, "event publish failed; the relay will retry"),
        }
        for (msg, envelope, applied) in settled {
            let trace_id = traces
                .get(&envelope.command_id)
                .map(TraceContext::trace_id)
                .unwrap_or_default();
            let span = tracing::info_span!("command", command_id = %envelope.command_id, %trace_id);
            self.finish(msg, envelope, applied, elapsed)
                .instrument(span)
                .await;
        }
    }

    /// One settled command: counted, announced and acked, inside its trace's span.
    async fn finish(
        &self,
        msg: jetstream::Message,
        envelope: CommandEnvelope,
        applied: Applied,
        elapsed: f64,
    ) {
        let op = envelope.command.operation().as_str();
        let outcome = match &applied {
            Applied::Committed { .. } => "committed",
            Applied::Rejected { .. } => "rejected",
            Applied::Duplicate { .. } => "duplicate",
        };
        tracing::debug!(target: trace::TARGET, operation = op, outcome, "command applied");
        metrics::counter!("allo_commands_applied_total", "operation" => op, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("allo_command_apply_seconds", "operation" => op).record(elapsed);
        self.announce(&envelope, &applied).await;
        self.release(&msg);
        if let Err(e) = msg.ack().await {
            tracing::warn!(error = %e, "ack failed; redelivery will be a no-op");
        }
    }

    /// Applies the batch; while Postgres is away, keeps the commands (progress acks, no
    /// delivery used up) and retries with back-off. A batch that fails for another reason is
    /// settled one command at a time, so one bad command cannot hold the others. The flag
    /// says whether `marks` were written.
    async fn apply_with_retry(
        &self,
        envelopes: &[&CommandEnvelope],
        work: &[(jetstream::Message, CommandEnvelope, i64)],
        marks: &[PublishedMark],
    ) -> (BatchResults, bool) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.apply_batch(envelopes, marks).await {
                Ok(results) => {
                    self.set_db_away(false);
                    return (results, true);
                }
                Err(e) if !is_transient(&e) && envelopes.len() > 1 => {
                    tracing::warn!(error = %e, commands = envelopes.len(), "batch failed; applying one by one");
                    metrics::counter!("allo_batch_fallbacks_total").increment(1);
                    let mut results = Vec::with_capacity(envelopes.len());
                    for envelope in envelopes {
                        results.push(self.apply(envelope).await);
                    }
                    return (results, false);
                }
                Err(e) if !is_transient(&e) => return (vec![Err(e)], false),
                Err(e) => {
                    self.set_db_away(true);
                    tracing::warn!(error = %e, commands = envelopes.len(), "batch not applied; retrying");
                    for (msg, _, _) in work {
                        let _ = msg.ack_with(AckKind::Progress).await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Publishes what the command produced besides its events: moderator notices, the outcome
    /// for `Prefer: wait`, and an `error` notice to the actor on rejection.
    async fn announce(&self, envelope: &CommandEnvelope, applied: &Applied) {
        if let Applied::Committed { notices, .. } = applied {
            for (i, notice) in notices.iter().enumerate() {
                let id = format!("mod:{}:{i}", envelope.command_id);
                if let Err(e) = self.publisher().moderators(notice, id).await {
                    tracing::warn!(error = %e, "moderator notice not published");
                }
            }
        }
        if envelope.reply_outcome {
            self.publish_outcome(applied.outcome()).await;
        }
        if let Applied::Rejected { outcome } = applied {
            let notice = UserNotice {
                kind: "error".into(),
                data: serde_json::json!({
                    "commandId": outcome.command_id,
                    "operation": outcome.operation,
                    "code": outcome.code,
                    "message": outcome.message,
                }),
            };
            self.notify(
                &envelope.actor,
                &notice,
                format!("error:{}", envelope.command_id),
            )
            .await;
        }
    }
}
