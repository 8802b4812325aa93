//! Which processes of a pool are alive, and which partitions each serves.
//!
//! Each process of a pool sends a heartbeat on `<prefix>.wrk.<pool>` (core NATS, nothing
//! stored) every `worker.heartbeat_ms` with the partitions it serves; it sends one at once
//! when that set changes or a newcomer appears, and a last one, `leaving`, when it stops. A
//! process silent for three heartbeats is taken for gone. Every process turns its view of the
//! members into its share of the partitions ([`assign`]) and takes a partition of its share
//! only once no live member says it serves it (crate::partitions). Until views agree a
//! partition may briefly wait, or (after a crash) be served twice, which is safe: a
//! conversation's row lock and each command's key in Postgres still apply commands once.

use std::collections::HashMap;
use std::time::Duration;

use allo_common::ops::Pool;
use allo_common::partition::{Partition, assign};
use allo_common::subjects::Subjects;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Heartbeats a member may miss before it is taken for gone.
const MISSED_BEATS: u32 = 3;

#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    id: String,
    #[serde(default)]
    serving: Vec<Partition>,
    #[serde(default)]
    leaving: bool,
}

/// How a live peer gave a partition up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandOver {
    /// It serves on and applies what its pull had been sent.
    Released,
    /// It stopped and handed back what it held.
    Left,
}

struct Peer {
    heard: Instant,
    serving: Vec<Partition>,
}

/// This process's view of its pool's members.
pub(crate) struct Membership {
    nats: async_nats::Client,
    subject: String,
    me: String,
    gone_after: Duration,
    peers: HashMap<String, Peer>,
    beats: async_nats::Subscriber,
    /// Partitions a live peer gave up, and whether it left (handing back what it held) or
    /// released them (applying what it held): taken only once that is settled.
    handed_over: HashMap<Partition, HandOver>,
}

impl Membership {
    /// Starts listening to the pool's heartbeats and announces this process.
    pub(crate) async fn join(
        nats: async_nats::Client,
        subjects: &Subjects,
        pool: Pool,
        me: String,
        every: Duration,
    ) -> Result<Self, async_nats::SubscribeError> {
        let subject = subjects.pool_members(pool);
        let beats = nats.subscribe(subject.clone()).await?;
        let membership = Self {
            nats,
            subject,
            me,
            gone_after: every * MISSED_BEATS,
            peers: HashMap::new(),
            beats,
            handed_over: HashMap::new(),
        };
        membership.beat(&[], false).await;
        Ok(membership)
    }

    /// Tells the pool which partitions this process serves (and, last, that it is leaving).
    pub(crate) async fn beat(&self, serving: &[Partition], leaving: bool) {
        let beat = Beat {
            id: self.me.clone(),
            serving: serving.to_vec(),
            leaving,
        };
        let payload = serde_json::to_vec(&beat).unwrap_or_default();
        if let Err(e) = self
            .nats
            .publish(self.subject.clone(), payload.into())
            .await
        {
            tracing::warn!(error = %e, "heartbeat not sent");
        }
        if leaving {
            let _ = self.nats.flush().await;
        }
    }

    /// The next heartbeat of another member (`None` when the subscription ended).
    pub(crate) async fn next(&mut self) -> Option<async_nats::Message> {
        self.beats.next().await
    }

    /// Takes in a heartbeat; true when it came from a member not heard of before, which
    /// should hear from us at once rather than a heartbeat later.
    pub(crate) fn heard(&mut self, msg: &async_nats::Message) -> bool {
        let Ok(beat) = serde_json::from_slice::<Beat>(&msg.payload) else {
            return false;
        };
        if beat.id == self.me {
            return false;
        }
        let before = self.peers.get(&beat.id).map(|p| p.serving.clone());
        let now: Vec<Partition> = if beat.leaving {
            Vec::new()
        } else {
            beat.serving.clone()
        };
        if let Some(before) = &before {
            let how = if beat.leaving {
                HandOver::Left
            } else {
                HandOver::Released
            };
            self.handed_over.extend(
                before
                    .iter()
                    .filter(|p| !now.contains(p))
                    .map(|p| (*p, how)),
            );
        }
        self.handed_over.retain(|p, _| !now.contains(p));
        if beat.leaving {
            self.peers.remove(&beat.id);
            return false;
        }
        self.peers.insert(
            beat.id,
            Peer {
                heard: Instant::now(),
                serving: now,
            },
        );
        before.is_none()
    }

    /// Forgets members silent for too long. What they held comes back after `ack_wait`, so
    /// their partitions are taken at once, without waiting for it.
    pub(crate) fn expire(&mut self) {
        let gone_after = self.gone_after;
        self.peers.retain(|id, peer| {
            let alive = peer.heard.elapsed() < gone_after;
            if !alive {
                tracing::warn!(
                    member = id,
                    "pool member silent; taking over its partitions"
                );
            }
            alive
        });
    }

    /// This process's share of the partitions, given the members it knows of.
    pub(crate) fn share(&self, partitions: u16) -> Vec<Partition> {
        let mut members: Vec<String> = self.peers.keys().cloned().collect();
        members.push(self.me.clone());
        assign(&members, &self.me, partitions)
    }

    /// Whether a live member says it serves `partition`.
    pub(crate) fn served_elsewhere(&self, partition: Partition) -> bool {
        self.peers.values().any(|p| p.serving.contains(&partition))
    }

    /// How `partition` was just given up by a live member, if it was; forgets it.
    pub(crate) fn take_handed_over(&mut self, partition: Partition) -> Option<HandOver> {
        self.handed_over.remove(&partition)
    }

    pub(crate) fn members(&self) -> usize {
        self.peers.len() + 1
    }
}
