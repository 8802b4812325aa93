//! The messages pool: conversations, membership and messages. One module per operation (the
//! send family shares one), each a handler that runs inside the command's [`Unit`] and returns
//! the committed result. Shared checks (participant, role, message lookup) live here.

mod conversation_create;
mod conversation_join;
mod erasure;
mod message_delete;
mod message_edit;
mod message_forward;
mod message_pin;
mod message_react;
mod message_read;
pub(crate) mod message_send;
mod participants;

use allo_common::command::Command;
use allo_common::error::{DomainError, ErrorCode};
use allo_common::ids::{ConversationId, MessageId, UserId};
use allo_common::ops::message_ref::MessageRef;
use chrono::{DateTime, Utc};

use crate::error::ApplyError;
use crate::unit::Unit;

pub(crate) use erasure::{Erasure, erase, withdraw_from_stream};

/// Applies one messages-pool command; the caller commits.
pub async fn apply(
    unit: &mut Unit<'_>,
    command: &Command,
) -> Result<serde_json::Value, ApplyError> {
    match command {
        Command::CreateConversation(c) => conversation_create::apply(unit, c).await,
        Command::SetHistoryVisibility(c) => conversation_create::set_history(unit, c).await,
        Command::JoinConversation(c) => conversation_join::apply(unit, c).await,
        Command::LeaveConversation(c) => participants::leave(unit, c).await,
        Command::AddParticipants(c) => participants::add(unit, c).await,
        Command::RemoveParticipant(c) => participants::remove(unit, c).await,
        Command::AddAdmin(c) => participants::set_admin(unit, c, true).await,
        Command::RemoveAdmin(c) => participants::set_admin(unit, c, false).await,
        Command::SendMessage(c)
        | Command::SendSecureMessage(c)
        | Command::SendVoiceMessage(c)
        | Command::SendSticker(c)
        | Command::SendEphemeralMessage(c) => message_send::apply(unit, c).await,
        Command::EditMessage(c) => message_edit::apply(unit, c).await,
        Command::DeleteMessage(c) => message_delete::delete(unit, c).await,
        Command::UnsendMessage(c) => message_delete::unsend(unit, c).await,
        Command::ForwardMessage(c) => message_forward::apply(unit, c).await,
        Command::MessageRead(c) => message_read::apply(unit, c).await,
        Command::PinMessage(c) => message_pin::apply(unit, c).await,
        Command::ReactionMessage(c) => message_react::apply(unit, c).await,
        other => Err(refuse(
            ErrorCode::Invalid,
            format!(
                "{} is not a messages-pool operation",
                other.operation().as_str()
            ),
        )),
    }
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> ApplyError {
    DomainError::new(code, message).into()
}

/// A refusal, for the other pools' handlers.
pub(crate) fn refuse_with(code: ErrorCode, message: impl Into<String>) -> ApplyError {
    refuse(code, message)
}

/// Refuses with 422 `limit_reached` when a total already stands at its bound: `count` is what
/// exists now, before the command adds one more.
pub(crate) fn within_total(count: i64, max: i64, what: &str) -> Result<(), ApplyError> {
    if count >= max {
        return Err(refuse(
            ErrorCode::LimitReached,
            format!("{what}: at most {max}"),
        ));
    }
    Ok(())
}

/// Active members of a conversation (locked with it by the caller's earlier statements).
pub(crate) async fn member_count(
    unit: &mut Unit<'_>,
    conversation: allo_common::ids::ConversationId,
) -> Result<i64, ApplyError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM participants WHERE conversation_id = $1 AND left_at IS NULL",
    )
    .bind(conversation)
    .fetch_one(&mut *unit.tx)
    .await?)
}

/// A participant's role in a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    fn parse(raw: &str) -> Self {
        match raw {
            "owner" => Self::Owner,
            "admin" => Self::Admin,
            _ => Self::Member,
        }
    }

    pub(crate) fn is_admin(self) -> bool {
        matches!(self, Self::Owner | Self::Admin)
    }
}

/// The user's role in a conversation they are an active participant of, and its kind.
/// Not found when the conversation does not exist; not a participant otherwise.
pub(crate) async fn require_participant(
    unit: &mut Unit<'_>,
    conversation: ConversationId,
    user: &UserId,
) -> Result<(Role, String), ApplyError> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT c.kind, p.role FROM conversations c
         LEFT JOIN participants p
           ON p.conversation_id = c.id AND p.user_id = $2 AND p.left_at IS NULL
         WHERE c.id = $1",
    )
    .bind(conversation)
    .bind(user.as_str())
    .fetch_optional(&mut *unit.tx)
    .await?;
    match row {
        None => Err(participant_refusal(false).into()),
        Some((_, None)) => Err(participant_refusal(true).into()),
        Some((kind, Some(role))) => Ok((Role::parse(&role), kind)),
    }
}

/// Why a user may not act in a conversation: it does not exist, or they are not in it.
pub(crate) fn participant_refusal(conversation_exists: bool) -> DomainError {
    if conversation_exists {
        DomainError::new(
            ErrorCode::NotParticipant,
            "you are not a participant of this conversation",
        )
    } else {
        DomainError::new(ErrorCode::NotFound, "conversation not found")
    }
}

/// A message's state, locked for the rest of the transaction.
#[derive(sqlx::FromRow)]
pub(crate) struct MessageState {
    pub author_id: String,
    pub seq: i64,
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub ephemeral: bool,
    pub deleted: bool,
    pub pinned: bool,
}

/// Loads a message of the named conversation. A message of another conversation, an unsent
/// one and an expired one are all "not found": nothing can act on them.
pub(crate) async fn load_message(
    unit: &mut Unit<'_>,
    conversation: ConversationId,
    message: MessageId,
) -> Result<MessageState, ApplyError> {
    let row: Option<(MessageState, bool, bool)> = sqlx::query_as::<
        _,
        (
            String,
            i64,
            String,
            DateTime<Utc>,
            bool,
            bool,
            bool,
            bool,
            bool,
        ),
    >(
        "SELECT author_id, seq, kind, created_at, expires_at IS NOT NULL, deleted_at IS NOT NULL,
                pinned_at IS NOT NULL, unsent_at IS NOT NULL OR hidden_at IS NOT NULL,
                expires_at IS NOT NULL AND expires_at <= now()
         FROM messages WHERE id = $1 AND conversation_id = $2 FOR UPDATE",
    )
    .bind(message)
    .bind(conversation)
    .fetch_optional(&mut *unit.tx)
    .await?
    .map(
        |(author_id, seq, kind, created_at, ephemeral, deleted, pinned, unsent, expired)| {
            (
                MessageState {
                    author_id,
                    seq,
                    kind,
                    created_at,
                    ephemeral,
                    deleted,
                    pinned,
                },
                unsent,
                expired,
            )
        },
    );
    match row {
        None => Err(refuse(
            ErrorCode::NotFound,
            "message not found in this conversation",
        )),
        Some((_, true, _)) => Err(refuse(
            ErrorCode::NotFound,
            "the message was unsent or is hidden pending review",
        )),
        Some((_, _, true)) => Err(refuse(ErrorCode::NotFound, "the message has expired")),
        Some((state, false, false)) => Ok(state),
    }
}

/// The common prelude of operations on one message: the actor is a participant, the message
/// is in the conversation and still there.
pub(crate) async fn participant_and_message(
    unit: &mut Unit<'_>,
    target: MessageRef,
) -> Result<(Role, String, MessageState), ApplyError> {
    let actor = unit.envelope.actor.clone();
    let (role, kind) = require_participant(unit, target.conversation_id, &actor).await?;
    let message = load_message(unit, target.conversation_id, target.message_id).await?;
    Ok((role, kind, message))
}

/// The message as events and reads show it (see `message_json` in the migrations).
pub(crate) async fn message_json(
    unit: &mut Unit<'_>,
    message: MessageId,
) -> Result<serde_json::Value, ApplyError> {
    Ok(
        sqlx::query_scalar("SELECT message_json(m, NULL) FROM messages m WHERE id = $1")
            .bind(message)
            .fetch_one(&mut *unit.tx)
            .await?,
    )
}
