//! How a pool's work is split across its processes (docs/scaling.md).
//!
//! Every command carries a partition token in its subject, taken from a stable hash of its
//! conversation (of its own id when it has none), and each pool has one durable consumer per
//! partition. The live processes of a pool split the partitions between them (see
//! [`assign`]), so all of a conversation's commands go to one process, and inside it to one
//! lane: batches never wait on each other's conversation locks, in one process or across
//! processes, and adding a process adds drain rate.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::CommandEnvelope;

/// One of a pool's partitions: `0..partitions` (`jetstream.partitions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Partition(pub u16);

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A hash of a command's routing key (its conversation, else its id) that every process and
/// every build agrees on: FNV-1a over the uuid's bytes, then a 64-bit finaliser so that both
/// halves are well mixed. (`std`'s hasher may change between Rust releases, and the ingress
/// and the workers of a rolling upgrade must agree.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteHash(u64);

impl RouteHash {
    pub fn of(key: &Uuid) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // splitmix64's finaliser.
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        Self(h)
    }

    pub fn of_command(envelope: &CommandEnvelope) -> Self {
        match envelope.command.conversation_id() {
            Some(c) => Self::of(&c.0),
            None => Self::of(&envelope.command_id.0),
        }
    }

    /// The partition, from the low half.
    pub fn partition(self, partitions: u16) -> Partition {
        Partition(((self.0 & 0xffff_ffff) % u64::from(partitions.max(1))) as u16)
    }

    /// The lane inside a process, from the high half: independent of the partition, so the
    /// partitions a process owns spread over all its lanes.
    pub fn lane(self, lanes: usize) -> usize {
        ((self.0 >> 32) % lanes.max(1) as u64) as usize
    }
}

/// The partitions `me` serves when `members` are a pool's live processes: the members sorted
/// by id take the partitions in turn, so each serves `partitions / members` (±1), and every
/// process with the same view of the members computes the same split. A process not (yet) in
/// its own view serves none.
pub fn assign(members: &[String], me: &str, partitions: u16) -> Vec<Partition> {
    let mut sorted: Vec<&String> = members.iter().collect();
    sorted.sort();
    sorted.dedup();
    let Some(rank) = sorted.iter().position(|m| m.as_str() == me) else {
        return Vec::new();
    };
    (0..partitions)
        .filter(|k| usize::from(*k) % sorted.len() == rank)
        .map(Partition)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: u64 = 6_209_249_216_324_241_540;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("w{i:02}")).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_member_and_the_split_is_even() {
        for n in 1..=20 {
            let ms = members(n);
            let mut seen = vec![0; 16];
            for m in &ms {
                let mine = assign(&ms, m, 16);
                assert!(
                    mine.len() == 16 / n || mine.len() == 16 / n + 1,
                    "{n}: {mine:?}"
                );
                for p in mine {
                    seen[usize::from(p.0)] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{n} members: {seen:?}");
        }
    }

    #[test]
    fn the_split_does_not_depend_on_the_order_a_member_heard_of_the_others() {
        let ms = members(3);
        let mut shuffled = ms.clone();
        shuffled.reverse();
        assert_eq!(assign(&ms, "w01", 16), assign(&shuffled, "w01", 16));
        assert!(assign(&ms, "stranger", 16).is_empty());
    }

    #[test]
    fn lanes_are_independent_of_partitions() {
        // The conversations of one partition still use both lanes of a process.
        let mut lanes = [0; 2];
        for i in 0..2000u128 {
            let h = RouteHash::of(&Uuid::from_u128(i * 7919));
            if h.partition(16) == Partition(3) {
                lanes[h.lane(2)] += 1;
            }
        }
        assert!(lanes[0] > 40 && lanes[1] > 40, "{lanes:?}");
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // A rolling upgrade's ingress and workers must route alike: values pinned from the
        // first build of this hash.
        let h = RouteHash::of(&Uuid::from_u128(0x0190_f5a2_7d2c_7a6e_9b1e_3c4d_5e6f_7a8b));
        assert_eq!(h.0, PINNED);
        assert_eq!(
            h.partition(16),
            Partition((PINNED & 0xffff_ffff) as u16 % 16)
        );
    }

    /// The design at ten times the bench's 20,000 conversations: 200,000 conversations over
    /// 16, 64 and 256 partitions, split over 1 to 16 processes. No partition gets more than
    /// chance puts over its fair share, and no process more than whole partitions force
    /// (docs/scaling.md).
    #[test]
    fn two_hundred_thousand_conversations_spread_evenly() {
        // uuid v7-like ids: a timestamp prefix and random bits, as the API makes them.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let ids: Vec<Uuid> = (0..200_000u64)
            .map(|i| Uuid::from_u64_pair((0x0190_f5a2_0000_7000 + (i << 16)) | 0x7000, next()))
            .collect();
        for partitions in [16u16, 64, 256] {
            let mut load = vec![0u32; usize::from(partitions)];
            for id in &ids {
                load[usize::from(RouteHash::of(id).partition(partitions).0)] += 1;
            }
            let fair = ids.len() as f64 / f64::from(partitions);
            let worst = f64::from(*load.iter().max().unwrap_or(&0)) / fair;
            // A uniform hash's busiest of n partitions sits about 3 standard deviations
            // (sqrt(fair)) above the mean; a skewed one would sit far beyond 5.
            let bound = 1.0 + 5.0 / fair.sqrt();
            assert!(
                worst < bound,
                "{partitions} partitions: busiest at {worst:.3}x fair (bound {bound:.3})"
            );
            for processes in [1usize, 2, 3, 4, 8, 16] {
                let members: Vec<String> = (0..processes).map(|i| format!("w{i:02}")).collect();
                let per_process: Vec<u32> = members
                    .iter()
                    .map(|m| {
                        assign(&members, m, partitions)
                            .iter()
                            .map(|p| load[usize::from(p.0)])
                            .sum()
                    })
                    .collect();
                let fair = ids.len() as f64 / processes as f64;
                let worst = f64::from(*per_process.iter().max().unwrap_or(&0)) / fair;
                // Whole partitions move: 16 partitions over 3 processes is 6/5/5 at best.
                let granularity = (usize::from(partitions).div_ceil(processes) * processes) as f64
                    / f64::from(partitions);
                assert!(
                    worst < granularity * 1.06,
                    "{partitions} partitions, {processes} processes: busiest at {worst:.3}x fair"
                );
            }
        }
    }
}
