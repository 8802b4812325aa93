//! The partitions a pool's process serves, and how they move between processes.
//!
//! A partition moves in two steps, so that a conversation's commands are never applied by two
//! processes at once nor out of order: the process giving it up closes its pull, applies what
//! the pull had already sent it, and says so in a heartbeat; the process taking it up waits
//! for that heartbeat and for the partition to have nothing in flight, then pulls. A process
//! that vanishes is waited for only until it misses three heartbeats (what it held comes back
//! after `ack_wait`).

use std::collections::HashMap;
use std::time::Duration;

use allo_common::ops::Pool;
use allo_common::partition::Partition;
use async_nats::jetstream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::membership::{HandOver, Membership};
use crate::pool::{Delivery, Worker};
use crate::pull::{Settle, Stop};

/// How long a starting process listens for the others before it takes its share.
const FIRST_LISTEN: Duration = Duration::from_millis(300);

struct Pull {
    stop: watch::Sender<Stop>,
    task: JoinHandle<()>,
}

/// The pulls of one pool in this process.
pub(crate) struct Served {
    pool: Pool,
    pulls: HashMap<Partition, Pull>,
    done: (
        mpsc::UnboundedSender<Partition>,
        mpsc::UnboundedReceiver<Partition>,
    ),
}

impl Served {
    pub(crate) fn new(pool: Pool) -> Self {
        Self {
            pool,
            pulls: HashMap::new(),
            done: mpsc::unbounded_channel(),
        }
    }

    /// The partitions being pulled, those being given up included until their pull has ended:
    /// the others must not take one before that.
    fn serving(&self) -> Vec<Partition> {
        let mut serving: Vec<Partition> = self.pulls.keys().copied().collect();
        serving.sort_unstable();
        serving
    }

    fn gauges(&self) {
        metrics::gauge!("allo_pool_partitions_served", "pool" => self.pool.as_str())
            .set(self.serving().len() as f64);
    }

    /// Closes every pull, handing back what each had just been sent.
    pub(crate) async fn close_all(&mut self) {
        for pull in self.pulls.values() {
            let _ = pull.stop.send(Stop::Shutdown);
        }
        for (partition, pull) in self.pulls.drain() {
            let _ = pull.task.await;
            served_gauge(self.pool, partition).set(0.0);
        }
        self.gauges();
    }
}

impl Worker {
    /// Starts pulling `partition` into `lanes`, once what its last server held is settled.
    fn start_pull(
        &self,
        served: &mut Served,
        consumer: jetstream::consumer::PullConsumer,
        partition: Partition,
        lanes: &[mpsc::UnboundedSender<Delivery>],
        settle: Settle,
    ) {
        let (stop, stop_rx) = watch::channel(Stop::No);
        let done = served.done.0.clone();
        let pull =
            self.clone()
                .pull_partition(consumer, partition, lanes.to_vec(), stop_rx, settle);
        let task = tokio::spawn(async move {
            pull.await;
            let _ = done.send(partition);
        });
        served.pulls.insert(partition, Pull { stop, task });
        served_gauge(served.pool, partition).set(1.0);
    }

    /// Serves every partition of the pool (`worker.split_partitions` off) until `shutdown`.
    pub(crate) async fn serve_all(
        &self,
        served: &mut Served,
        stream: &jetstream::stream::Stream,
        lanes: &[mpsc::UnboundedSender<Delivery>],
        shutdown: &mut watch::Receiver<bool>,
    ) {
        for partition in self.subjects().all_partitions() {
            if let Some(consumer) = self
                .partition_consumer(stream, served.pool, partition)
                .await
            {
                self.start_pull(served, consumer, partition, lanes, Settle::Nothing);
            }
        }
        served.gauges();
        let _ = shutdown.wait_for(|s| *s).await;
    }

    /// Serves this process's share of the pool's partitions until `shutdown`, moving
    /// partitions as members come and go (see the module docs).
    pub(crate) async fn serve_share(
        &self,
        served: &mut Served,
        membership: &mut Membership,
        stream: &jetstream::stream::Stream,
        lanes: &[mpsc::UnboundedSender<Delivery>],
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let every = Duration::from_millis(self.settings().worker.heartbeat_ms);
        let partitions = self.subjects().partitions();
        let ack_wait = self.settings().ack_wait();
        let listening = tokio::time::sleep(FIRST_LISTEN);
        tokio::pin!(listening);
        let mut listened = false;
        let mut ticker = tokio::time::interval(every);
        let mut shown = Vec::new();
        loop {
            if listened {
                membership.expire();
                let share = membership.share(partitions);
                for (partition, pull) in &served.pulls {
                    if !share.contains(partition) && *pull.stop.borrow() == Stop::No {
                        let _ = pull.stop.send(Stop::Released);
                    }
                }
                for partition in share {
                    if served.pulls.contains_key(&partition)
                        || membership.served_elsewhere(partition)
                    {
                        continue;
                    }
                    let Some(consumer) = self
                        .partition_consumer(stream, served.pool, partition)
                        .await
                    else {
                        continue;
                    };
                    let wait = match membership.take_handed_over(partition) {
                        Some(HandOver::Released) => Settle::InFlight(ack_wait),
                        Some(HandOver::Left) => Settle::HandedBack,
                        None => Settle::Nothing,
                    };
                    self.start_pull(served, consumer, partition, lanes, wait);
                }
                let serving = served.serving();
                if serving != shown {
                    tracing::info!(pool = served.pool.as_str(), members = membership.members(), partitions = ?serving, "serving");
                    membership.beat(&serving, false).await;
                    served.gauges();
                    shown = serving;
                }
            }
            tokio::select! {
                _ = stopped(shutdown) => break,
                _ = &mut listening, if !listened => listened = true,
                _ = ticker.tick() => membership.beat(&shown, false).await,
                Some(partition) = served.done.1.recv() => {
                    // A partition given up: its pull is closed and what it was sent is in the
                    // lanes; the others may take it now.
                    served.pulls.remove(&partition);
                    served_gauge(served.pool, partition).set(0.0);
                    served.gauges();
                    shown = served.serving();
                    membership.beat(&shown, false).await;
                }
                msg = membership.next() => match msg {
                    Some(msg) => if membership.heard(&msg) {
                        membership.beat(&shown, false).await;
                    },
                    None => {
                        tracing::error!("the pool's heartbeats stopped; serving what it has");
                        stopped(shutdown).await;
                        break;
                    }
                },
            }
        }
    }

    async fn partition_consumer(
        &self,
        stream: &jetstream::stream::Stream,
        pool: Pool,
        partition: Partition,
    ) -> Option<jetstream::consumer::PullConsumer> {
        let name = self.subjects().partition_consumer(pool, partition);
        match stream.get_consumer(&name).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, consumer = name, "partition consumer missing; is the stream provisioned?");
                None
            }
        }
    }
}

/// Resolves once `shutdown` is set (without holding its lock across an await).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// `allo_pool_partition_served{pool, partition}`: 1 while this process serves the partition.
fn served_gauge(pool: Pool, partition: Partition) -> metrics::Gauge {
    metrics::gauge!("allo_pool_partition_served", "pool" => pool.as_str(), "partition" => partition.to_string())
}
