//! The event envelope: one JSON shape on NATS (`<prefix>.evt.<conversationID>.<type>`), in the
//! Postgres event log and (flattened into `data`) on sockets.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, ConversationId, EventId, UserId};

/// Event types, named as the original named its socket events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "message")]
    Message,
    #[serde(rename = "conversationCreated")]
    ConversationCreated,
    #[serde(rename = "participantJoined")]
    ParticipantJoined,
    #[serde(rename = "participantLeft")]
    ParticipantLeft,
    #[serde(rename = "participantRemoved")]
    ParticipantRemoved,
    #[serde(rename = "participantRoleChanged")]
    ParticipantRoleChanged,
    #[serde(rename = "messageEdited")]
    MessageEdited,
    #[serde(rename = "messageDeleted")]
    MessageDeleted,
    #[serde(rename = "messageUnsent")]
    MessageUnsent,
    #[serde(rename = "messageForwarded")]
    MessageForwarded,
    #[serde(rename = "messageStatusUpdate")]
    MessageStatusUpdate,
    #[serde(rename = "messagePinned")]
    MessagePinned,
    #[serde(rename = "messageReaction")]
    MessageReaction,
    #[serde(rename = "pollVoted")]
    PollVoted,
    #[serde(rename = "pollClosed")]
    PollClosed,
    #[serde(rename = "messageRestored")]
    MessageRestored,
    #[serde(rename = "historyVisibilityChanged")]
    HistoryVisibilityChanged,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::ConversationCreated => "conversationCreated",
            Self::ParticipantJoined => "participantJoined",
            Self::ParticipantLeft => "participantLeft",
            Self::ParticipantRemoved => "participantRemoved",
            Self::ParticipantRoleChanged => "participantRoleChanged",
            Self::MessageEdited => "messageEdited",
            Self::MessageDeleted => "messageDeleted",
            Self::MessageUnsent => "messageUnsent",
            Self::MessageForwarded => "messageForwarded",
            Self::MessageStatusUpdate => "messageStatusUpdate",
            Self::MessagePinned => "messagePinned",
            Self::MessageReaction => "messageReaction",
            Self::PollVoted => "pollVoted",
            Self::PollClosed => "pollClosed",
            Self::MessageRestored => "messageRestored",
            Self::HistoryVisibilityChanged => "historyVisibilityChanged",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(raw.to_string())).ok()
    }
}

/// Who an event names as having done it. `System` where naming the user would tell the
/// audience more than it may know: a poll vote, a message hidden by reports, a moderator's
/// decision shown to the room, an expiry. On the wire a system actor is `null`, so no user id
/// (not even one spelled "system") can be mistaken for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Option<UserId>", into = "Option<UserId>")]
pub enum Actor {
    User(UserId),
    System,
}

impl Actor {
    /// The user, if the event names one.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Self::User(user) => Some(user),
            Self::System => None,
        }
    }
}

impl From<Option<UserId>> for Actor {
    fn from(user: Option<UserId>) -> Self {
        user.map_or(Self::System, Self::User)
    }
}

impl From<Actor> for Option<UserId> {
    fn from(actor: Actor) -> Self {
        match actor {
            Actor::User(user) => Some(user),
            Actor::System => None,
        }
    }
}

/// A committed event. `seq` is the conversation's own counter: 1, 2, 3... with no gaps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    #[serde(rename = "eventId")]
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    pub seq: i64,
    /// The command that caused it; `None` for a system event (its command would name the user).
    #[serde(rename = "commandId")]
    pub command_id: Option<CommandId>,
    pub actor: Actor,
    pub at: DateTime<Utc>,
    pub data: serde_json::Value,
}

impl EventEnvelope {
    /// The Socket.IO payload: `data` with `conversationID`, `seq` and `eventId` added, so the
    /// original's clients read the fields they always read.
    pub fn socket_payload(&self) -> serde_json::Value {
        let mut payload = match &self.data {
            serde_json::Value::Object(map) => map.clone(),
            other => {
                let mut map = serde_json::Map::new();
                map.insert("value".into(), other.clone());
                map
            }
        };
        payload.insert(
            "conversationID".into(),
            self.conversation_id.to_string().into(),
        );
        payload.insert("seq".into(), self.seq.into());
        payload.insert("eventId".into(), self.event_id.to_string().into());
        serde_json::Value::Object(payload)
    }
}

/// A notice for one user's sockets (a rejection of their command). Not part of any
/// conversation's log, so it has no `seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserNotice {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_actor_is_null_on_the_wire_and_a_user_is_their_id() {
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(
            serde_json::to_value(Actor::User(alice.clone())).unwrap(),
            "alice"
        );
        assert_eq!(
            serde_json::to_value(Actor::System).unwrap(),
            serde_json::Value::Null
        );
        let back: Actor = serde_json::from_value(serde_json::Value::Null).unwrap();
        assert_eq!(back, Actor::System);
        let back: Actor = serde_json::from_value("alice".into()).unwrap();
        assert_eq!(back.user(), Some(&alice));
    }
}
