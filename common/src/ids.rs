//! Id newtypes. Each is built only through `parse` (or generated), so a value that exists is
//! valid: safe as a key in Postgres and, for uuids, as a NATS subject token.

use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Parses the textual form a client sends; any UUID version is accepted.
            pub fn parse(raw: &str) -> Result<Self, String> {
                Uuid::try_parse(raw.trim())
                    .map(Self)
                    .map_err(|_| "must be a UUID".to_string())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A conversation. Derived from the creating command's id, so a retried create reuses it.
    ConversationId
);
uuid_id!(
    /// A message. Derived from the sending command's id, so a retried send reuses it.
    MessageId
);
uuid_id!(
    /// A command: the unit of exactly-once. `Nats-Msg-Id` on the command stream and primary key
    /// of the `commands` table.
    CommandId
);
uuid_id!(
    /// A scheduled message (until it is sent, when it becomes a message).
    ScheduledId
);
uuid_id!(
    /// A report of a message to the moderators.
    ReportId
);
uuid_id!(
    /// An event: `Nats-Msg-Id` on the event stream, so a republished event is dropped by NATS.
    EventId
);

/// Namespace for ids derived from an `Idempotency-Key`.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_3e0f_1b2d_4c5e_8f70_9a1b_2c3d_4e5f);

impl CommandId {
    /// A fresh, time-ordered id for a command sent without an idempotency key.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The same (user, key) always maps to the same command id: a retried request cannot
    /// create anything twice, on any ingress replica, without shared state.
    pub fn from_idempotency_key(user: &UserId, key: &str) -> Self {
        let mut name = Vec::with_capacity(user.as_str().len() + key.len() + 1);
        name.extend_from_slice(user.as_str().as_bytes());
        name.push(0);
        name.extend_from_slice(key.as_bytes());
        Self(Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, &name))
    }

    /// An id owned by this command (the message it sends, the conversation it creates):
    /// deterministic, so redeliveries and retries agree on it.
    fn derive(&self, what: &str) -> Uuid {
        Uuid::new_v5(&self.0, what.as_bytes())
    }

    pub fn message_id(&self) -> MessageId {
        MessageId(self.derive("message"))
    }

    pub fn conversation_id(&self) -> ConversationId {
        ConversationId(self.derive("conversation"))
    }

    pub fn scheduled_id(&self) -> ScheduledId {
        ScheduledId(self.derive("scheduled"))
    }

    pub fn report_id(&self) -> ReportId {
        ReportId(self.derive("report"))
    }
}

impl ScheduledId {
    /// The id of the message a scheduled message becomes, and of its dispatch "command".
    pub fn message_id(&self) -> MessageId {
        MessageId(Uuid::new_v5(&self.0, b"message"))
    }

    pub fn dispatch_command_id(&self) -> CommandId {
        CommandId(Uuid::new_v5(&self.0, b"dispatch"))
    }
}

impl EventId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

/// A user id: the JWT `sub`. Opaque to Allo (it comes from the identity provider), so it is
/// bounded and printable but otherwise free; [`UserId::subject_token`] makes it subject-safe.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

pub const USER_ID_MAX_CHARS: usize = 128;

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.chars().count() > USER_ID_MAX_CHARS {
            return Err(format!("must be at most {USER_ID_MAX_CHARS} characters"));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must not contain whitespace or control characters".into());
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Base64url (no padding) of the id: a valid NATS token whatever the id holds (`.`, `*`).
    pub fn subject_token(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    /// Inverse of [`UserId::subject_token`].
    pub fn from_subject_token(token: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        Self::parse(&String::from_utf8(bytes).ok()?).ok()
    }
}

impl TryFrom<String> for UserId {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> Self {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_is_deterministic_per_user() {
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let a1 = CommandId::from_idempotency_key(&alice, "k1");
        assert_eq!(a1, CommandId::from_idempotency_key(&alice, "k1"));
        assert_ne!(a1, CommandId::from_idempotency_key(&alice, "k2"));
        assert_ne!(a1, CommandId::from_idempotency_key(&bob, "k1"));
        assert_eq!(a1.message_id(), a1.message_id());
        assert_ne!(a1.message_id().0, a1.conversation_id().0);
    }

    #[test]
    fn user_ids_round_trip_through_subject_tokens() {
        for raw in ["alice", "a.b*c>d", "üser@example.com"] {
            let id = UserId::parse(raw).unwrap();
            let token = id.subject_token();
            assert!(!token.contains(['.', '*', '>']), "{token}");
            assert_eq!(UserId::from_subject_token(&token), Some(id));
        }
    }

    #[test]
    fn user_ids_refuse_empty_blank_and_huge() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse(&"x".repeat(129)).is_err());
    }
}
