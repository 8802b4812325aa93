//! The command envelope published to `ALLO_CMD` (see docs/nats.md).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, ConversationId, UserId};
use crate::ops::conversation_create::CreateConversation;
use crate::ops::conversation_join::JoinConversation;
use crate::ops::message_send::SendMessage;
use crate::ops::{Operation, Pool};

/// One validated command, tagged with its operation name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "body")]
pub enum Command {
    #[serde(rename = "createConversation")]
    CreateConversation(CreateConversation),
    #[serde(rename = "joinConversation")]
    JoinConversation(JoinConversation),
    #[serde(rename = "sendMessage")]
    SendMessage(SendMessage),
}

impl Command {
    pub fn operation(&self) -> Operation {
        match self {
            Self::CreateConversation(_) => Operation::CreateConversation,
            Self::JoinConversation(_) => Operation::JoinConversation,
            Self::SendMessage(_) => Operation::SendMessage,
        }
    }

    pub fn pool(&self) -> Pool {
        self.operation().pool()
    }

    /// The conversation the command acts in.
    pub fn conversation_id(&self) -> ConversationId {
        match self {
            Self::CreateConversation(c) => c.conversation_id,
            Self::JoinConversation(c) => c.conversation_id,
            Self::SendMessage(c) => c.conversation_id,
        }
    }

    /// The ids ingress assigned, returned in the 202 so clients can refer to what they created.
    pub fn assigned_ids(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut ids = serde_json::Map::new();
        ids.insert(
            "conversationID".into(),
            self.conversation_id().to_string().into(),
        );
        if let Self::SendMessage(c) = self {
            ids.insert("messageId".into(), c.message_id.to_string().into());
        }
        ids
    }
}

/// What travels on NATS: the command plus who sent it and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandEnvelope {
    pub command_id: CommandId,
    pub actor: UserId,
    #[serde(default)]
    pub roles: Vec<String>,
    /// When ingress accepted the command.
    pub at: DateTime<Utc>,
    pub command: Command,
}

/// The outcome of a command as clients read it (`GET /api/commands/{id}`, `Prefer: wait`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandOutcome {
    pub command_id: CommandId,
    pub operation: String,
    pub status: CommandStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::error::ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    /// Stored by JetStream, not yet applied.
    Accepted,
    /// Applied; its events are in the log.
    Committed,
    /// Refused by the worker; `code` and `message` say why.
    Rejected,
}

/// A row of the `commands` table.
#[derive(sqlx::FromRow)]
struct CommandRow {
    actor_id: String,
    operation: String,
    status: String,
    error_code: Option<String>,
    error_message: Option<String>,
    result: Option<serde_json::Value>,
}

/// The recorded outcome of an applied command and who sent it; `None` while it is still
/// pending (or never existed).
pub async fn load_outcome(
    db: &sqlx::PgPool,
    id: CommandId,
) -> Result<Option<(UserId, CommandOutcome)>, sqlx::Error> {
    let row: Option<CommandRow> = sqlx::query_as(
        "SELECT actor_id, operation, status, error_code, error_message, result FROM commands WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|r| {
        let actor = UserId::parse(&r.actor_id).ok()?;
        let outcome = CommandOutcome {
            command_id: id,
            operation: r.operation,
            status: if r.status == "rejected" {
                CommandStatus::Rejected
            } else {
                CommandStatus::Committed
            },
            code: r
                .error_code
                .as_deref()
                .and_then(crate::error::ErrorCode::parse),
            message: r.error_message,
            result: r.result,
        };
        Some((actor, outcome))
    }))
}
