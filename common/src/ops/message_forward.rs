//! `forwardMessage`: `{fromConversationID, toConversationID, messageId}`. The caller must be in
//! both conversations; the copy gets an id derived from the command id.

use serde::{Deserialize, Serialize};

use super::{ParseContext, RequestError, parse_id};
use crate::command::Command;
use crate::ids::{ConversationId, MessageId};

#[derive(Debug, Deserialize)]
pub struct ForwardMessageRequest {
    #[serde(rename = "fromConversationID")]
    pub from_conversation_id: String,
    #[serde(rename = "toConversationID")]
    pub to_conversation_id: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardMessage {
    #[serde(rename = "fromConversationID")]
    pub from_conversation_id: ConversationId,
    #[serde(rename = "toConversationID")]
    pub to_conversation_id: ConversationId,
    #[serde(rename = "messageId")]
    pub message_id: MessageId,
    /// The id of the copy in the target conversation.
    #[serde(rename = "newMessageId")]
    pub new_message_id: MessageId,
}

pub fn parse(req: ForwardMessageRequest, ctx: &ParseContext<'_>) -> Result<Command, RequestError> {
    Ok(Command::ForwardMessage(ForwardMessage {
        from_conversation_id: parse_id(
            "fromConversationID",
            &req.from_conversation_id,
            ConversationId::parse,
        )?,
        to_conversation_id: parse_id(
            "toConversationID",
            &req.to_conversation_id,
            ConversationId::parse,
        )?,
        message_id: parse_id("messageId", &req.message_id, MessageId::parse)?,
        new_message_id: ctx.command_id.message_id(),
    }))
}
