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
        let (mut waiting, mut in_flight, mut redelivered) = (0, 0, 0);
        let mut oldest_ns: Option<i128> = None;
        for partition in subjects.all_partitions() {
            let info = stream
                .consumer_info(subjects.partition_consumer(pool, partition))
                .await?;
            waiting += info.num_pending;
            in_flight += info.num_ack_pending;
            redelivered += info.num_redelivered;
            if info.num_pending > 0 {
                // The first of the partition's commands after the last one delivered.
                let next = stream
                    .raw_message_builder()
                    .sequence(info.delivered.stream_sequence + 1)
                    .next_by_subject(subjects.partition_commands(pool, partition))
                    .send()
                    .await?;
                let stored = next.time.unix_timestamp_nanos();
                oldest_ns = Some(oldest_ns.map_or(stored, |o| o.min(stored)));
            }
        }
        let label = pool.as_str();
        metrics::gauge!("allo_pool_commands_waiting", "pool" => label).set(waiting as f64);
        metrics::gauge!("allo_pool_commands_in_flight", "pool" => label).set(in_flight as f64);
        metrics::gauge!("allo_pool_redelivered", "pool" => label).set(redelivered as f64);
        let now_ns = i128::from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
        let oldest = oldest_ns.map_or(0.0, |o| ((now_ns - o).max(0) as f64) / 1e9);
        metrics::gauge!("allo_pool_oldest_waiting_seconds", "pool" => label).set(oldest);
    }
    Ok(())
}
