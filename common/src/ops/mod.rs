//! The operations clients call, one module each. A module holds the original's request body,
//! its validation, and the command it becomes. HTTP (`POST /api/chat/<op>`) and Socket.IO
//! events call [`parse_request`], so both paths validate exactly alike.

pub mod conversation_create;
pub mod conversation_join;
pub mod message_forward;
pub mod message_ref;
pub mod message_send;
pub mod participants;
pub mod polls;
pub mod reports;
pub mod scheduler;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::command::Command;
use crate::config::Limits;
use crate::ids::CommandId;

/// Which worker pool applies an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    Messages,
    Scheduler,
    Reports,
    Polls,
}

impl Pool {
    pub const ALL: [Pool; 4] = [Pool::Messages, Pool::Scheduler, Pool::Reports, Pool::Polls];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Scheduler => "scheduler",
            Self::Reports => "reports",
            Self::Polls => "polls",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }
}

/// Every operation Allo accepts, named as the original named its routes (plus the membership
/// operations the original lacked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    #[serde(rename = "createConversation")]
    CreateConversation,
    #[serde(rename = "joinConversation")]
    JoinConversation,
    #[serde(rename = "leaveConversation")]
    LeaveConversation,
    #[serde(rename = "addParticipants")]
    AddParticipants,
    #[serde(rename = "removeParticipant")]
    RemoveParticipant,
    #[serde(rename = "addAdmin")]
    AddAdmin,
    #[serde(rename = "removeAdmin")]
    RemoveAdmin,
    #[serde(rename = "sendMessage")]
    SendMessage,
    #[serde(rename = "sendSecureMessage")]
    SendSecureMessage,
    #[serde(rename = "sendVoiceMessage")]
    SendVoiceMessage,
    #[serde(rename = "sendSticker")]
    SendSticker,
    #[serde(rename = "sendEphemeralMessage")]
    SendEphemeralMessage,
    #[serde(rename = "editMessage")]
    EditMessage,
    #[serde(rename = "deleteMessage")]
    DeleteMessage,
    #[serde(rename = "unsendMessage")]
    UnsendMessage,
    #[serde(rename = "forwardMessage")]
    ForwardMessage,
    #[serde(rename = "messageRead")]
    MessageRead,
    #[serde(rename = "pinMessage")]
    PinMessage,
    #[serde(rename = "reactionMessage")]
    ReactionMessage,
    #[serde(rename = "scheduleMessage")]
    ScheduleMessage,
    #[serde(rename = "cancelScheduledMessage")]
    CancelScheduledMessage,
    #[serde(rename = "createPoll")]
    CreatePoll,
    #[serde(rename = "votePoll")]
    VotePoll,
    #[serde(rename = "closePoll")]
    ClosePoll,
    #[serde(rename = "reportMessage")]
    ReportMessage,
    #[serde(rename = "resolveReport")]
    ResolveReport,
    #[serde(rename = "restoreMessage")]
    RestoreMessage,
    #[serde(rename = "setHistoryVisibility")]
    SetHistoryVisibility,
}

impl Operation {
    pub const ALL: [Operation; 28] = [
        Operation::CreateConversation,
        Operation::JoinConversation,
        Operation::LeaveConversation,
        Operation::AddParticipants,
        Operation::RemoveParticipant,
        Operation::AddAdmin,
        Operation::RemoveAdmin,
        Operation::SendMessage,
        Operation::SendSecureMessage,
        Operation::SendVoiceMessage,
        Operation::SendSticker,
        Operation::SendEphemeralMessage,
        Operation::EditMessage,
        Operation::DeleteMessage,
        Operation::UnsendMessage,
        Operation::ForwardMessage,
        Operation::MessageRead,
        Operation::PinMessage,
        Operation::ReactionMessage,
        Operation::ScheduleMessage,
        Operation::CancelScheduledMessage,
        Operation::CreatePoll,
        Operation::VotePoll,
        Operation::ClosePoll,
        Operation::ReportMessage,
        Operation::ResolveReport,
        Operation::RestoreMessage,
        Operation::SetHistoryVisibility,
    ];

    /// The send family: a committed one's result is the message it created, read back from
    /// the message itself rather than stored a second time with the command
    /// ([`crate::command::load_outcome`]).
    pub const SENDS: [Operation; 5] = [
        Operation::SendMessage,
        Operation::SendSecureMessage,
        Operation::SendVoiceMessage,
        Operation::SendSticker,
        Operation::SendEphemeralMessage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateConversation => "createConversation",
            Self::JoinConversation => "joinConversation",
            Self::LeaveConversation => "leaveConversation",
            Self::AddParticipants => "addParticipants",
            Self::RemoveParticipant => "removeParticipant",
            Self::AddAdmin => "addAdmin",
            Self::RemoveAdmin => "removeAdmin",
            Self::SendMessage => "sendMessage",
            Self::SendSecureMessage => "sendSecureMessage",
            Self::SendVoiceMessage => "sendVoiceMessage",
            Self::SendSticker => "sendSticker",
            Self::SendEphemeralMessage => "sendEphemeralMessage",
            Self::EditMessage => "editMessage",
            Self::DeleteMessage => "deleteMessage",
            Self::UnsendMessage => "unsendMessage",
            Self::ForwardMessage => "forwardMessage",
            Self::MessageRead => "messageRead",
            Self::PinMessage => "pinMessage",
            Self::ReactionMessage => "reactionMessage",
            Self::ScheduleMessage => "scheduleMessage",
            Self::CancelScheduledMessage => "cancelScheduledMessage",
            Self::CreatePoll => "createPoll",
            Self::VotePoll => "votePoll",
            Self::ClosePoll => "closePoll",
            Self::ReportMessage => "reportMessage",
            Self::ResolveReport => "resolveReport",
            Self::RestoreMessage => "restoreMessage",
            Self::SetHistoryVisibility => "setHistoryVisibility",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == raw)
    }

    pub fn pool(self) -> Pool {
        match self {
            Self::ScheduleMessage | Self::CancelScheduledMessage => Pool::Scheduler,
            Self::CreatePoll | Self::VotePoll | Self::ClosePoll => Pool::Polls,
            Self::ReportMessage | Self::ResolveReport | Self::RestoreMessage => Pool::Reports,
            _ => Pool::Messages,
        }
    }

    /// Whether a committed result is a new resource (201) rather than a change (200).
    pub fn creates(self) -> bool {
        matches!(
            self,
            Self::CreateConversation
                | Self::SendMessage
                | Self::SendSecureMessage
                | Self::SendVoiceMessage
                | Self::SendSticker
                | Self::SendEphemeralMessage
                | Self::ForwardMessage
                | Self::ScheduleMessage
                | Self::CreatePoll
                | Self::ReportMessage
        )
    }
}

/// Why a request was refused before it reached the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unknown operation `{0}`")]
    UnknownOperation(String),
    /// Not JSON, or not a JSON object: 400.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// A field is missing, of the wrong type or out of range: 422.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A field names someone other than the caller (`userID`, `owner`): 403.
    #[error("{field}: {message}")]
    NotCaller { field: String, message: String },
    /// The caller's token lacks the role the operation needs: 403.
    #[error("{0}")]
    Forbidden(String),
}

impl RequestError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What parsing needs besides the body: who asks, the command's id, and the limits.
pub struct ParseContext<'a> {
    pub caller: &'a Caller,
    pub command_id: CommandId,
    pub limits: &'a Limits,
}

/// Parses and validates one request into the command it becomes.
pub fn parse_request(
    op: &str,
    body: &[u8],
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    let op = Operation::parse(op).ok_or_else(|| RequestError::UnknownOperation(op.into()))?;
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    parse_value(op, value, ctx)
}

/// Like [`parse_request`], for a body that is already JSON (a socket event's payload).
pub fn parse_value(
    op: Operation,
    value: serde_json::Value,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    if !value.is_object() {
        return Err(RequestError::Malformed(
            "the body must be a JSON object".into(),
        ));
    }
    use Operation as Op;
    match op {
        Op::CreateConversation => conversation_create::parse(typed(value)?, ctx),
        Op::JoinConversation => conversation_join::parse(typed(value)?, ctx),
        Op::LeaveConversation => participants::parse_leave(typed(value)?, ctx),
        Op::AddParticipants => participants::parse_add(typed(value)?, ctx),
        Op::RemoveParticipant => participants::parse_remove(typed(value)?, ctx),
        Op::AddAdmin => participants::parse_add_admin(typed(value)?, ctx),
        Op::RemoveAdmin => participants::parse_remove_admin(typed(value)?, ctx),
        Op::SendMessage => message_send::parse(typed(value)?, ctx),
        Op::SendSecureMessage => message_send::parse_secure(typed(value)?, ctx),
        Op::SendVoiceMessage => message_send::parse_voice(typed(value)?, ctx),
        Op::SendSticker => message_send::parse_sticker(typed(value)?, ctx),
        Op::SendEphemeralMessage => message_send::parse_ephemeral(typed(value)?, ctx),
        Op::EditMessage => message_ref::parse_edit(typed(value)?, ctx),
        Op::DeleteMessage => message_ref::parse_delete(typed(value)?, ctx),
        Op::UnsendMessage => message_ref::parse_unsend(typed(value)?, ctx),
        Op::ForwardMessage => message_forward::parse(typed(value)?, ctx),
        Op::MessageRead => message_ref::parse_read(typed(value)?, ctx),
        Op::PinMessage => message_ref::parse_pin(typed(value)?, ctx),
        Op::ReactionMessage => message_ref::parse_reaction(typed(value)?, ctx),
        Op::ScheduleMessage => scheduler::parse_schedule(typed(value)?, ctx),
        Op::CancelScheduledMessage => scheduler::parse_cancel(typed(value)?, ctx),
        Op::CreatePoll => polls::parse_create(typed(value)?, ctx),
        Op::VotePoll => polls::parse_vote(typed(value)?, ctx),
        Op::ClosePoll => polls::parse_close(typed(value)?, ctx),
        Op::ReportMessage => reports::parse_report(typed(value)?, ctx),
        Op::ResolveReport => reports::parse_resolve(typed(value)?, ctx),
        Op::RestoreMessage => reports::parse_restore(typed(value)?, ctx),
        Op::SetHistoryVisibility => conversation_create::parse_history(typed(value)?, ctx),
    }
}

/// Deserializes a body, naming the offending field on failure.
fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, RequestError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        // serde reports a missing field at the parent, naming it in the message.
        let field = match message.split('`').nth(1) {
            Some(name) if message.starts_with("missing field") => name.to_string(),
            _ if path == "." => "body".to_string(),
            _ => path,
        };
        RequestError::invalid(field, message)
    })
}

/// The original sent `userID`/`owner` in bodies; here they may only name the caller.
fn check_is_caller(field: &str, value: Option<&str>, caller: &Caller) -> Result<(), RequestError> {
    match value {
        Some(named) if named != caller.user.as_str() => Err(RequestError::NotCaller {
            field: field.into(),
            message: "must be the authenticated user (or omitted)".into(),
        }),
        _ => Ok(()),
    }
}

/// Parses a required id field, naming it on failure.
fn parse_id<T>(
    field: &str,
    raw: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, RequestError> {
    parse(raw).map_err(|m| RequestError::invalid(field, m))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::config::Settings;
    use crate::ids::UserId;

    pub fn caller(name: &str) -> Caller {
        Caller {
            user: UserId::parse(name).unwrap(),
            roles: vec![],
            expires_at: i64::MAX,
        }
    }

    pub fn parse(op: &str, body: serde_json::Value, who: &str) -> Result<Command, RequestError> {
        let limits = Settings::default().limits;
        let caller = caller(who);
        let ctx = ParseContext {
            caller: &caller,
            command_id: CommandId::generate(),
            limits: &limits,
        };
        parse_request(op, body.to_string().as_bytes(), &ctx)
    }

    pub fn field_of(result: Result<Command, RequestError>) -> String {
        match result {
            Err(RequestError::Invalid { field, .. })
            | Err(RequestError::NotCaller { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn malformed_and_unknown_are_told_apart() {
        let limits = crate::config::Settings::default().limits;
        let c = caller("alice");
        let ctx = ParseContext {
            caller: &c,
            command_id: CommandId::generate(),
            limits: &limits,
        };
        assert!(matches!(
            parse_request("sendMessage", b"{not json", &ctx),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            parse_request("sendMessage", b"[1]", &ctx),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            parse_request("nope", b"{}", &ctx),
            Err(RequestError::UnknownOperation(_))
        ));
    }

    #[test]
    fn wrong_types_and_missing_fields_name_the_field() {
        let conv = uuid::Uuid::now_v7().to_string();
        assert_eq!(
            field_of(parse("sendMessage", json!({"conversationID": conv}), "a")),
            "message"
        );
        assert_eq!(
            field_of(parse(
                "sendMessage",
                json!({"conversationID": conv, "message": 5}),
                "a"
            )),
            "message"
        );
        assert_eq!(
            field_of(parse(
                "sendMessage",
                json!({"conversationID": 1, "message": "x"}),
                "a"
            )),
            "conversationID"
        );
    }
}
