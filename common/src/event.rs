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
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(raw.to_string())).ok()
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
    #[serde(rename = "commandId")]
    pub command_id: Option<CommandId>,
    pub actor: UserId,
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
