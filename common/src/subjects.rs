//! Every NATS name Allo uses, derived from the subject prefix so that deployments and test runs
//! sharing one NATS never see each other. The contract is written up in docs/nats.md.

use crate::command::CommandEnvelope;
use crate::config::Settings;
use crate::event::EventType;
use crate::ids::{CommandId, ConversationId, UserId};
use crate::ops::{Operation, Pool};
use crate::partition::{Partition, RouteHash};

/// Checks a prefix: lowercase letters, digits, `_` and `-`, starting with a letter.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    let mut chars = prefix.chars();
    let starts_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = prefix.len() <= 32
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if starts_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "subject prefix `{prefix}` must be 1-32 of [a-z0-9_-], starting with a letter"
        ))
    }
}

#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
    /// Partitions per pool (`jetstream.partitions`): every process must use the same count.
    partitions: u16,
}

impl Subjects {
    /// `prefix` must have passed [`validate_prefix`] (config does this at load).
    pub fn new(prefix: &str, partitions: u16) -> Self {
        Self {
            prefix: prefix.to_string(),
            partitions: partitions.max(1),
        }
    }

    /// The names of a deployment, from its settings.
    pub fn of(settings: &Settings) -> Self {
        Self::new(&settings.subject_prefix, settings.jetstream.partitions)
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// Every partition of a pool.
    pub fn all_partitions(&self) -> impl Iterator<Item = Partition> + use<> {
        (0..self.partitions).map(Partition)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<PREFIX>_CMD`: the work-queue stream of commands.
    pub fn command_stream(&self) -> String {
        format!("{}_CMD", self.stream_base())
    }

    /// `<PREFIX>_RATE`: per-user command counters (one subject per user and window).
    pub fn rate_stream(&self) -> String {
        format!("{}_RATE", self.stream_base())
    }

    /// `<prefix>.rate.<base64url(userID)>.<window>`
    pub fn rate(&self, user: &UserId, window: u64) -> String {
        format!("{}.rate.{}.{}", self.prefix, user.subject_token(), window)
    }

    pub fn all_rates(&self) -> String {
        format!("{}.rate.>", self.prefix)
    }

    /// `<PREFIX>_EVT`: the limits-retention stream of events.
    pub fn event_stream(&self) -> String {
        format!("{}_EVT", self.stream_base())
    }

    fn stream_base(&self) -> String {
        self.prefix.to_ascii_uppercase().replace('-', "_")
    }

    /// The durable consumer of one partition of a pool: `<pool>-<partition>`.
    pub fn partition_consumer(&self, pool: Pool, partition: Partition) -> String {
        format!("{}-{partition}", pool.as_str())
    }

    /// Before partitions, a pool's one consumer was named after it; provisioning removes it
    /// (its filter overlaps the partitions', which a work-queue stream refuses).
    pub fn legacy_pool_consumer(&self, pool: Pool) -> String {
        pool.as_str().to_string()
    }

    /// `<prefix>.cmd.>`: everything the command stream holds.
    pub fn all_commands(&self) -> String {
        format!("{}.cmd.>", self.prefix)
    }

    /// `<prefix>.cmd.<pool>.>`: all of a pool's commands.
    pub fn pool_commands(&self, pool: Pool) -> String {
        format!("{}.cmd.{}.>", self.prefix, pool.as_str())
    }

    /// `<prefix>.cmd.<pool>.<partition>.>`: one partition consumer's filter.
    pub fn partition_commands(&self, pool: Pool, partition: Partition) -> String {
        format!("{}.cmd.{}.{partition}.>", self.prefix, pool.as_str())
    }

    /// `<prefix>.cmd.<pool>.<partition>.<op>.<commandId>`; the partition comes from the
    /// command's conversation ([`RouteHash`]).
    pub fn command(&self, envelope: &CommandEnvelope) -> String {
        let op = envelope.command.operation();
        self.command_in(
            op,
            RouteHash::of_command(envelope).partition(self.partitions),
            envelope.command_id,
        )
    }

    /// `<prefix>.cmd.*.*.*.<commandId>`: finds a command still waiting in the stream by its id
    /// alone.
    pub fn any_command(&self, id: CommandId) -> String {
        format!("{}.cmd.*.*.*.{id}", self.prefix)
    }

    /// A command's subject in a given partition.
    pub fn command_in(&self, op: Operation, partition: Partition, id: CommandId) -> String {
        format!(
            "{}.cmd.{}.{partition}.{}.{id}",
            self.prefix,
            op.pool().as_str(),
            op.as_str(),
        )
    }

    /// `<prefix>.wrk.<pool>`: core NATS (not stored) heartbeats of a pool's processes, from
    /// which each works out the partitions it serves.
    pub fn pool_members(&self, pool: Pool) -> String {
        format!("{}.wrk.{}", self.prefix, pool.as_str())
    }

    /// `<prefix>.evt.<conversationID>.<type>`
    pub fn event(&self, conversation: ConversationId, kind: EventType) -> String {
        format!("{}.evt.{}.{}", self.prefix, conversation, kind.as_str())
    }

    /// `<prefix>.evt.<conversationID>.>`: one conversation's events.
    pub fn conversation_events(&self, conversation: ConversationId) -> String {
        format!("{}.evt.{}.>", self.prefix, conversation)
    }

    pub fn all_events(&self) -> String {
        format!("{}.evt.>", self.prefix)
    }

    /// `<prefix>.usr.<base64url(userID)>.<type>`: events addressed to one user's sockets.
    pub fn user(&self, user: &UserId, kind: &str) -> String {
        format!("{}.usr.{}.{}", self.prefix, user.subject_token(), kind)
    }

    pub fn all_users(&self) -> String {
        format!("{}.usr.>", self.prefix)
    }

    /// The user a `<prefix>.usr.<token>.<type>` subject addresses, and the type.
    pub fn parse_user_subject(&self, subject: &str) -> Option<(UserId, String)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".usr.")?;
        let (token, kind) = rest.split_once('.')?;
        Some((UserId::from_subject_token(token)?, kind.to_string()))
    }

    /// `<prefix>.sig.<conversationID>.<kind>`: core NATS (not stored) signals between fan-out
    /// replicas: `typing`, `presence`, and `who` (a request: who is online here?).
    pub fn signal(&self, conversation: ConversationId, kind: &str) -> String {
        format!("{}.sig.{}.{}", self.prefix, conversation, kind)
    }

    pub fn conversation_signals(&self, conversation: ConversationId) -> String {
        format!("{}.sig.{}.>", self.prefix, conversation)
    }

    /// `<prefix>.mod.<type>`: events for moderators' sockets (reports).
    pub fn moderators(&self, kind: &str) -> String {
        format!("{}.mod.{}", self.prefix, kind)
    }

    pub fn all_moderators(&self) -> String {
        format!("{}.mod.>", self.prefix)
    }

    /// `<prefix>.res.<commandId>`: core NATS (not stored) outcome for `Prefer: wait`.
    pub fn command_outcome(&self, id: CommandId) -> String {
        format!("{}.res.{}", self.prefix, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("allo").is_ok());
        assert!(validate_prefix("t_1a-b").is_ok());
        for bad in ["", "Allo", "a.b", "a*", "1abc", "a b"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_derive_from_the_prefix() {
        let s = Subjects::new("t-1", 16);
        assert_eq!(s.command_stream(), "T_1_CMD");
        assert_eq!(s.pool_commands(Pool::Messages), "t-1.cmd.messages.>");
        assert_eq!(
            s.partition_commands(Pool::Messages, Partition(3)),
            "t-1.cmd.messages.3.>"
        );
        assert_eq!(s.partition_consumer(Pool::Polls, Partition(15)), "polls-15");
        let user = UserId::parse("a.b").unwrap();
        let subject = s.user(&user, "error");
        assert_eq!(s.parse_user_subject(&subject), Some((user, "error".into())));
    }
}
