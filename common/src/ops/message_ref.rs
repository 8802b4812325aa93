//! Operations on one existing message, named by `{conversationID, messageId}`: editMessage,
//! deleteMessage, unsendMessage, messageRead, pinMessage, reactionMessage. The worker refuses
//! (404) a message that is not in the named conversation.

use serde::{Deserialize, Serialize};

use super::{ParseContext, RequestError, parse_id};
use crate::command::Command;
use crate::ids::{ConversationId, MessageId};
use crate::text::{Emoji, MessageText};

#[derive(Debug, Deserialize)]
pub struct MessageRefRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    #[serde(rename = "messageId")]
    pub message_id: MessageId,
}

// Request bodies repeat the two id fields instead of flattening a shared struct: serde's
// flatten loses the path of a field error, and every error must name its field.
fn target(conversation_id: &str, message_id: &str) -> Result<MessageRef, RequestError> {
    Ok(MessageRef {
        conversation_id: parse_id("conversationID", conversation_id, ConversationId::parse)?,
        message_id: parse_id("messageId", message_id, MessageId::parse)?,
    })
}

#[derive(Debug, Deserialize)]
pub struct EditMessageRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
    #[serde(rename = "newMessage")]
    pub new_message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditMessage {
    #[serde(flatten)]
    pub target: MessageRef,
    #[serde(rename = "newMessage")]
    pub new_message: MessageText,
}

#[derive(Debug, Deserialize)]
pub struct PinMessageRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
    pub pin: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinMessage {
    #[serde(flatten)]
    pub target: MessageRef,
    pub pin: bool,
}

#[derive(Debug, Deserialize)]
pub struct ReactionMessageRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
    pub emoji: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionMessage {
    #[serde(flatten)]
    pub target: MessageRef,
    pub emoji: Emoji,
}

pub fn parse_edit(
    req: EditMessageRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::EditMessage(EditMessage {
        target: target(&req.conversation_id, &req.message_id)?,
        new_message: MessageText::parse(&req.new_message, ctx.limits.message_max_chars)
            .map_err(|m| RequestError::invalid("newMessage", m))?,
    }))
}

pub fn parse_delete(
    req: MessageRefRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::DeleteMessage(target(
        &req.conversation_id,
        &req.message_id,
    )?))
}

pub fn parse_unsend(
    req: MessageRefRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::UnsendMessage(target(
        &req.conversation_id,
        &req.message_id,
    )?))
}

pub fn parse_read(
    req: MessageRefRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::MessageRead(target(
        &req.conversation_id,
        &req.message_id,
    )?))
}

pub fn parse_pin(req: PinMessageRequest, _ctx: &ParseContext<'_>) -> Result<Command, RequestError> {
    Ok(Command::PinMessage(PinMessage {
        target: target(&req.conversation_id, &req.message_id)?,
        pin: req.pin,
    }))
}

pub fn parse_reaction(
    req: ReactionMessageRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::ReactionMessage(ReactionMessage {
        target: target(&req.conversation_id, &req.message_id)?,
        emoji: Emoji::parse(&req.emoji).map_err(|m| RequestError::invalid("emoji", m))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use serde_json::json;

    #[test]
    fn references_and_fields_are_checked() {
        let conv = uuid::Uuid::now_v7().to_string();
        let msg = uuid::Uuid::now_v7().to_string();
        assert!(
            parse(
                "deleteMessage",
                json!({"conversationID": conv, "messageId": msg}),
                "a"
            )
            .is_ok()
        );
        assert_eq!(
            field_of(parse(
                "deleteMessage",
                json!({"conversationID": conv, "messageId": "m1"}),
                "a"
            )),
            "messageId"
        );
        assert_eq!(
            field_of(parse("unsendMessage", json!({"conversationID": conv}), "a")),
            "messageId"
        );
        assert_eq!(
            field_of(parse(
                "editMessage",
                json!({"conversationID": conv, "messageId": msg, "newMessage": ""}),
                "a"
            )),
            "newMessage"
        );
        assert_eq!(
            field_of(parse(
                "pinMessage",
                json!({"conversationID": conv, "messageId": msg, "pin": "yes"}),
                "a"
            )),
            "pin"
        );
        assert_eq!(
            field_of(parse(
                "reactionMessage",
                json!({"conversationID": conv, "messageId": msg, "emoji": "lol"}),
                "a"
            )),
            "emoji"
        );
        assert!(
            parse(
                "reactionMessage",
                json!({"conversationID": conv, "messageId": msg, "emoji": "🎉"}),
                "a"
            )
            .is_ok()
        );
    }
}
