//! The messages pool: conversations and messages. One module per operation, each a handler
//! that runs inside the command's [`Unit`] and returns the committed result.

mod conversation_create;
mod conversation_join;
mod message_send;

use allo_common::command::Command;
use allo_common::error::{DomainError, ErrorCode};
use allo_common::ids::{ConversationId, UserId};

use crate::error::ApplyError;
use crate::unit::Unit;

/// Applies one messages-pool command; the caller commits.
pub async fn apply(
    unit: &mut Unit<'_>,
    command: &Command,
) -> Result<serde_json::Value, ApplyError> {
    match command {
        Command::CreateConversation(c) => conversation_create::apply(unit, c).await,
        Command::JoinConversation(c) => conversation_join::apply(unit, c).await,
        Command::SendMessage(c) => message_send::apply(unit, c).await,
    }
}

/// The actor's role in a conversation they are an active participant of.
/// Not found when the conversation does not exist; not a participant otherwise.
pub(crate) async fn require_participant(
    unit: &mut Unit<'_>,
    conversation: ConversationId,
    user: &UserId,
) -> Result<String, ApplyError> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT p.role FROM conversations c
         LEFT JOIN participants p
           ON p.conversation_id = c.id AND p.user_id = $2 AND p.left_at IS NULL
         WHERE c.id = $1",
    )
    .bind(conversation)
    .bind(user.as_str())
    .fetch_optional(&mut *unit.tx)
    .await?;
    match row {
        None => Err(DomainError::new(ErrorCode::NotFound, "conversation not found").into()),
        Some((None,)) => Err(DomainError::new(
            ErrorCode::NotParticipant,
            "you are not a participant of this conversation",
        )
        .into()),
        Some((Some(role),)) => Ok(role),
    }
}
