//! The command envelope published to `ALLO_CMD` (see docs/nats.md).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, ConversationId, UserId};
use crate::ops::conversation_create::{CreateConversation, SetHistoryVisibility};
use crate::ops::conversation_join::JoinConversation;
use crate::ops::message_forward::ForwardMessage;
use crate::ops::message_ref::{EditMessage, MessageRef, PinMessage, ReactionMessage};
use crate::ops::message_send::SendMessage;
use crate::ops::participants::{AddParticipants, LeaveConversation, ParticipantChange};
use crate::ops::polls::{CreatePoll, VotePoll};
use crate::ops::reports::{ReportMessage, ResolveReport};
use crate::ops::scheduler::{CancelScheduledMessage, ScheduleMessage};
use crate::ops::{Operation, Pool};

/// One validated command, tagged with its operation name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "body")]
pub enum Command {
    #[serde(rename = "createConversation")]
    CreateConversation(CreateConversation),
    #[serde(rename = "joinConversation")]
    JoinConversation(JoinConversation),
    #[serde(rename = "leaveConversation")]
    LeaveConversation(LeaveConversation),
    #[serde(rename = "addParticipants")]
    AddParticipants(AddParticipants),
    #[serde(rename = "removeParticipant")]
    RemoveParticipant(ParticipantChange),
    #[serde(rename = "addAdmin")]
    AddAdmin(ParticipantChange),
    #[serde(rename = "removeAdmin")]
    RemoveAdmin(ParticipantChange),
    #[serde(rename = "sendMessage")]
    SendMessage(SendMessage),
    #[serde(rename = "sendSecureMessage")]
    SendSecureMessage(SendMessage),
    #[serde(rename = "sendVoiceMessage")]
    SendVoiceMessage(SendMessage),
    #[serde(rename = "sendSticker")]
    SendSticker(SendMessage),
    #[serde(rename = "sendEphemeralMessage")]
    SendEphemeralMessage(SendMessage),
    #[serde(rename = "editMessage")]
    EditMessage(EditMessage),
    #[serde(rename = "deleteMessage")]
    DeleteMessage(MessageRef),
    #[serde(rename = "unsendMessage")]
    UnsendMessage(MessageRef),
    #[serde(rename = "forwardMessage")]
    ForwardMessage(ForwardMessage),
    #[serde(rename = "messageRead")]
    MessageRead(MessageRef),
    #[serde(rename = "pinMessage")]
    PinMessage(PinMessage),
    #[serde(rename = "reactionMessage")]
    ReactionMessage(ReactionMessage),
    #[serde(rename = "scheduleMessage")]
    ScheduleMessage(ScheduleMessage),
    #[serde(rename = "cancelScheduledMessage")]
    CancelScheduledMessage(CancelScheduledMessage),
    #[serde(rename = "createPoll")]
    CreatePoll(CreatePoll),
    #[serde(rename = "votePoll")]
    VotePoll(VotePoll),
    #[serde(rename = "closePoll")]
    ClosePoll(MessageRef),
    #[serde(rename = "reportMessage")]
    ReportMessage(ReportMessage),
    #[serde(rename = "resolveReport")]
    ResolveReport(ResolveReport),
    #[serde(rename = "restoreMessage")]
    RestoreMessage(MessageRef),
    #[serde(rename = "setHistoryVisibility")]
    SetHistoryVisibility(SetHistoryVisibility),
}

impl Command {
    pub fn operation(&self) -> Operation {
        match self {
            Self::CreateConversation(_) => Operation::CreateConversation,
            Self::JoinConversation(_) => Operation::JoinConversation,
            Self::LeaveConversation(_) => Operation::LeaveConversation,
            Self::AddParticipants(_) => Operation::AddParticipants,
            Self::RemoveParticipant(_) => Operation::RemoveParticipant,
            Self::AddAdmin(_) => Operation::AddAdmin,
            Self::RemoveAdmin(_) => Operation::RemoveAdmin,
            Self::SendMessage(_) => Operation::SendMessage,
            Self::SendSecureMessage(_) => Operation::SendSecureMessage,
            Self::SendVoiceMessage(_) => Operation::SendVoiceMessage,
            Self::SendSticker(_) => Operation::SendSticker,
            Self::SendEphemeralMessage(_) => Operation::SendEphemeralMessage,
            Self::EditMessage(_) => Operation::EditMessage,
            Self::DeleteMessage(_) => Operation::DeleteMessage,
            Self::UnsendMessage(_) => Operation::UnsendMessage,
            Self::ForwardMessage(_) => Operation::ForwardMessage,
            Self::MessageRead(_) => Operation::MessageRead,
            Self::PinMessage(_) => Operation::PinMessage,
            Self::ReactionMessage(_) => Operation::ReactionMessage,
            Self::ScheduleMessage(_) => Operation::ScheduleMessage,
            Self::CancelScheduledMessage(_) => Operation::CancelScheduledMessage,
            Self::CreatePoll(_) => Operation::CreatePoll,
            Self::VotePoll(_) => Operation::VotePoll,
            Self::ClosePoll(_) => Operation::ClosePoll,
            Self::ReportMessage(_) => Operation::ReportMessage,
            Self::ResolveReport(_) => Operation::ResolveReport,
            Self::RestoreMessage(_) => Operation::RestoreMessage,
            Self::SetHistoryVisibility(_) => Operation::SetHistoryVisibility,
        }
    }

    pub fn pool(&self) -> Pool {
        self.operation().pool()
    }

    /// The conversation the command acts in (for a forward: the target); none for commands
    /// that name a scheduled message or a report.
    pub fn conversation_id(&self) -> Option<ConversationId> {
        Some(match self {
            Self::CreateConversation(c) => c.conversation_id,
            Self::SetHistoryVisibility(c) => c.conversation_id,
            Self::JoinConversation(c) => c.conversation_id,
            Self::LeaveConversation(c) => c.conversation_id,
            Self::AddParticipants(c) => c.conversation_id,
            Self::RemoveParticipant(c) | Self::AddAdmin(c) | Self::RemoveAdmin(c) => {
                c.conversation_id
            }
            Self::SendMessage(c)
            | Self::SendSecureMessage(c)
            | Self::SendVoiceMessage(c)
            | Self::SendSticker(c)
            | Self::SendEphemeralMessage(c) => c.conversation_id,
            Self::EditMessage(c) => c.target.conversation_id,
            Self::DeleteMessage(c) | Self::UnsendMessage(c) | Self::MessageRead(c) => {
                c.conversation_id
            }
            Self::ForwardMessage(c) => c.to_conversation_id,
            Self::PinMessage(c) => c.target.conversation_id,
            Self::ReactionMessage(c) => c.target.conversation_id,
            Self::ScheduleMessage(c) => c.conversation_id,
            Self::CreatePoll(c) => c.conversation_id,
            Self::VotePoll(c) => c.target.conversation_id,
            Self::ClosePoll(c) | Self::RestoreMessage(c) => c.conversation_id,
            Self::ReportMessage(c) => c.target.conversation_id,
            Self::CancelScheduledMessage(_) | Self::ResolveReport(_) => return None,
        })
    }

    /// The ids ingress assigned, returned in the 202 so clients can refer to what they created.
    pub fn assigned_ids(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut ids = serde_json::Map::new();
        if let Some(conversation) = self.conversation_id() {
            ids.insert("conversationID".into(), conversation.to_string().into());
        }
        let message = match self {
            Self::SendMessage(c)
            | Self::SendSecureMessage(c)
            | Self::SendVoiceMessage(c)
            | Self::SendSticker(c)
            | Self::SendEphemeralMessage(c) => Some(c.message_id),
            Self::ForwardMessage(c) => Some(c.new_message_id),
            Self::CreatePoll(c) => Some(c.message_id),
            _ => None,
        };
        if let Some(id) = message {
            ids.insert("messageId".into(), id.to_string().into());
        }
        match self {
            Self::ScheduleMessage(c) => {
                ids.insert(
                    "scheduledMessageId".into(),
                    c.scheduled_id.to_string().into(),
                );
            }
            Self::ReportMessage(c) => {
                ids.insert("reportId".into(), c.report_id.to_string().into());
            }
            _ => {}
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
    /// Someone waits for the outcome (`Prefer: wait`): the worker publishes it on the command's
    /// outcome subject. Otherwise it does not, which saves a NATS message per command.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reply_outcome: bool,
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
    /// This command is the replay of a dead letter: the dead-lettered command's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<CommandId>,
    /// This command was dead-lettered and replayed: the id it was replayed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_as: Option<CommandId>,
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
    replay_of: Option<CommandId>,
    replayed_as: Option<CommandId>,
}

/// The recorded outcome of an applied command and who sent it; `None` while it is still
/// pending (or never existed).
pub async fn load_outcome(
    db: impl sqlx::PgExecutor<'_>,
    id: CommandId,
) -> Result<Option<(UserId, CommandOutcome)>, sqlx::Error> {
    // A committed send stores no result: it is its message, as its author reads it now (so an
    // edit, a deletion or an erasure shows here as everywhere else, with nothing to scrub; one
    // hidden pending review is redacted, as events serve it).
    let sends: Vec<&str> = Operation::SENDS.iter().map(|o| o.as_str()).collect();
    let row: Option<CommandRow> = sqlx::query_as(
        "SELECT actor_id, operation, status, error_code, error_message,
                CASE WHEN result IS NULL AND status = 'committed' AND operation = ANY($2)
                     THEN (SELECT CASE WHEN m.hidden_at IS NULL THEN message_json(m, c.actor_id)
                                       ELSE scrub_content(message_json(m, c.actor_id))
                                            || '{\"hidden\": true}'::jsonb END
                           FROM messages m WHERE m.id = $3)
                     ELSE result END AS result,
                (SELECT old_id FROM command_replays WHERE new_id = c.id) AS replay_of,
                (SELECT new_id FROM command_replays WHERE old_id = c.id) AS replayed_as
         FROM commands c WHERE id = $1",
    )
    .bind(id)
    .bind(&sends)
    .bind(id.message_id())
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
            replay_of: r.replay_of,
            replayed_as: r.replayed_as,
        };
        Some((actor, outcome))
    }))
}

/// The dead-lettered command this one replays, if it is a replay (for a replay still waiting
/// in the stream; [`load_outcome`] reads the links of applied commands).
pub async fn replay_of(
    db: impl sqlx::PgExecutor<'_>,
    id: CommandId,
) -> Result<Option<CommandId>, sqlx::Error> {
    sqlx::query_scalar("SELECT old_id FROM command_replays WHERE new_id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}
