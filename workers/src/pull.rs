//! One partition's pull loop: what this process takes from a partition consumer while it
//! serves that partition (crate::membership decides which), routed to the pool's lanes.

use std::time::Duration;

use allo_common::partition::{Partition, RouteHash};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::pool::{Delivery, Worker};

/// How long one pull request waits for commands: also how long a stop may wait for the
/// request under way to end.
const PULL_EXPIRES: Duration = Duration::from_millis(500);

/// How long past the server's expiry of a pull request the client stops reading it.
const EXPIRY_MARGIN: Duration = Duration::from_millis(50);

/// Why a partition's pull stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Keep pulling.
    No,
    /// Another process serves the partition now: what was delivered here is still applied
    /// here, so the partition's commands stay in order.
    Released,
    /// The process is stopping: what was delivered here goes back to the stream.
    Shutdown,
}

/// What a process taking a partition over waits for before it pulls, so that it never
/// overtakes commands the previous one still holds or has handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Nobody served it (or its server vanished): pull at once.
    Nothing,
    /// A live process gave it up and is applying what it was sent: wait until nothing is in
    /// flight, at most this long.
    InFlight(Duration),
    /// Its server stopped and handed back what it held: wait until that is deliverable again
    /// (redeliveries then come before new commands).
    HandedBack,
}

impl Worker {
    /// Pulls `partition` into `lanes` until told to stop. A partition just served by another
    /// process is pulled only once what that process held is settled or deliverable again
    /// (`settle`), so a hand-over never reorders a conversation.
    pub(crate) async fn pull_partition(
        self,
        consumer: jetstream::consumer::PullConsumer,
        partition: Partition,
        lanes: Vec<mpsc::UnboundedSender<Delivery>>,
        mut stop: watch::Receiver<Stop>,
        settle: Settle,
    ) {
        let batch_size = self.settings().worker.batch_size;
        match settle {
            Settle::Nothing => {}
            Settle::InFlight(limit) => self.wait_settled(&consumer, limit, &mut stop).await,
            Settle::HandedBack => {
                tokio::time::sleep(HAND_BACK_DELAY + Duration::from_millis(250)).await;
            }
        }
        // One bounded request at a time (up to `batch_size`, for at most PULL_EXPIRES), each
        // read to its end: when told to stop, no request of ours is left registered on the
        // server, so nothing is sent to a pull that no longer reads.
        while *stop.borrow() == Stop::No {
            let batch = match consumer
                .batch()
                .max_messages(batch_size)
                .expires(PULL_EXPIRES)
                .messages()
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, %partition, "pull failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut batch = std::pin::pin!(batch);
            // The server ends the request at PULL_EXPIRES; the client's own end of the batch
            // may wait seconds more for a status that does not come (seen: 5 s stalls at
            // 500 msgs/s), so stop reading just past the server's expiry and ask again.
            let ends = tokio::time::Instant::now() + PULL_EXPIRES + EXPIRY_MARGIN;
            while let Ok(Some(msg)) = tokio::time::timeout_at(ends, batch.next()).await {
                match msg {
                    // Sent after a stop: what a stopping process was sent goes back; what a
                    // process giving the partition up was sent, it still applies.
                    Ok(msg) if *stop.borrow() == Stop::Shutdown => hand_back(&msg).await,
                    Ok(msg) => self.route(msg, &lanes).await,
                    Err(e) => tracing::warn!(error = %e, %partition, "pull stream error"),
                }
            }
        }
    }

    /// Sends a pulled command to its conversation's lane.
    async fn route(&self, msg: jetstream::Message, lanes: &[mpsc::UnboundedSender<Delivery>]) {
        self.hold(&msg);
        let delivery = decode(msg);
        let lane = match &delivery.envelope {
            Ok(e) => RouteHash::of_command(e).lane(lanes.len()),
            Err(_) => 0,
        };
        if let Err(mpsc::error::SendError(d)) = lanes[lane].send(delivery) {
            self.release(&d.msg);
            hand_back(&d.msg).await;
        }
    }

    /// Waits until nothing of the partition is delivered and unacked, at most `limit`.
    async fn wait_settled(
        &self,
        consumer: &jetstream::consumer::PullConsumer,
        limit: Duration,
        stop: &mut watch::Receiver<Stop>,
    ) {
        let mut consumer = consumer.clone();
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline && *stop.borrow() == Stop::No {
            match consumer.info().await {
                Ok(info) if info.num_ack_pending == 0 => return,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "consumer info"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(crate) fn decode(msg: jetstream::Message) -> Delivery {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let envelope =
        serde_json::from_slice(&msg.payload).map_err(|e| format!("undecodable command: {e}"));
    Delivery {
        msg,
        envelope,
        delivered,
        pulled_at: tokio::time::Instant::now(),
    }
}

/// How long a handed-back command waits before it is delivered again: a margin against a
/// handed-back command being delivered to a request of this process that is still ending.
pub(crate) const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

/// Hands a command back to the stream, for whichever process serves its partition next.
pub(crate) async fn hand_back(msg: &jetstream::Message) {
    let _ = msg.ack_with(AckKind::Nak(Some(HAND_BACK_DELAY))).await;
}
