//! Backlog gauges per pool, read from the pool's JetStream consumer by every worker process
//! (for every pool, whichever it serves): what an operator or an autoscaler scales on.
//!
//! - `allo_pool_commands_waiting{pool}`: commands not yet delivered to any process (the
//!   consumer's pending count, the number KEDA's NATS JetStream scaler reads as lag);
//! - `allo_pool_commands_in_flight{pool}`: delivered and not yet acked;
//! - `allo_pool_redelivered{pool}`: in flight after more than one delivery;
//! - `allo_pool_oldest_waiting_seconds{pool}`: age of the oldest command not yet delivered.

use std::time::Duration;

use allo_common::ops::Pool;
use allo_common::subjects::Subjects;
use async_nats::jetstream;
use tokio::sync::watch;

/// Reads every pool's consumer each `every` until shutdown. A failed read leaves the last
/// values and is logged once per failure streak.
pub async fn run(
    js: jetstream::Context,
    subjects: Subjects,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing = false;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match read_all(&js, &subjects).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "reading the pools' backlog");
            }
            Err(_) => {}
        }
    }
}

async fn read_all(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<()> {
    let stream = js.get_stream_no_info(subjects.command_stream()).await?;
    for pool in Pool::ALL {
        let info = stream.consumer_info(subjects.pool_consumer(pool)).await?;
        let label = pool.as_str();
        metrics::gauge!("allo_pool_commands_waiting", "pool" => label).set(info.num_pending as f64);
        metrics::gauge!("allo_pool_commands_in_flight", "pool" => label)
            .set(info.num_ack_pending as f64);
        metrics::gauge!("allo_pool_redelivered", "pool" => label).set(info.num_redelivered as f64);
        let oldest = if info.num_pending == 0 {
            0.0
        } else {
            // The first of the pool's commands after the last one delivered.
            let next = stream
                .raw_message_builder()
                .sequence(info.delivered.stream_sequence + 1)
                .next_by_subject(subjects.pool_commands(pool))
                .send()
                .await?;
            let stored_ns = next.time.unix_timestamp_nanos();
            let now_ns = i128::from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
            ((now_ns - stored_ns).max(0) as f64) / 1e9
        };
        metrics::gauge!("allo_pool_oldest_waiting_seconds", "pool" => label).set(oldest);
    }
    Ok(())
}
