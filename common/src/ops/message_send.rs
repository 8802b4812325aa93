//! `sendMessage`: `{userID, conversationID, message}`. Only participants send (checked by the
//! worker against Postgres); the message id is derived from the command id.

use serde::{Deserialize, Serialize};

use super::{ParseContext, RequestError, check_is_caller, parse_id};
use crate::command::Command;
use crate::ids::{ConversationId, MessageId};
use crate::text::MessageText;

#[derive(Debug, Deserialize)]
pub struct SendMessageRequest {
    #[serde(rename = "userID", default)]
    pub user_id: Option<String>,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    #[serde(rename = "messageId")]
    pub message_id: MessageId,
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    pub message: MessageText,
}

pub fn parse(req: SendMessageRequest, ctx: &ParseContext<'_>) -> Result<Command, RequestError> {
    check_is_caller("userID", req.user_id.as_deref(), ctx.caller)?;
    Ok(Command::SendMessage(SendMessage {
        message_id: ctx.command_id.message_id(),
        conversation_id: parse_id(
            "conversationID",
            &req.conversation_id,
            ConversationId::parse,
        )?,
        message: MessageText::parse(&req.message, ctx.limits.message_max_chars)
            .map_err(|m| RequestError::invalid("message", m))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use serde_json::json;

    #[test]
    fn message_rules() {
        let conv = uuid::Uuid::now_v7().to_string();
        let send = |v| parse("sendMessage", v, "alice");
        assert!(send(json!({"conversationID": conv, "message": "hi"})).is_ok());
        assert!(send(json!({"conversationID": conv, "message": "hi", "userID": "alice"})).is_ok());
        assert_eq!(
            field_of(send(
                json!({"conversationID": conv, "message": "hi", "userID": "bob"})
            )),
            "userID"
        );
        assert_eq!(
            field_of(send(json!({"conversationID": conv, "message": "  "}))),
            "message"
        );
        assert_eq!(
            field_of(send(
                json!({"conversationID": conv, "message": "x".repeat(4097)})
            )),
            "message"
        );
        assert_eq!(
            field_of(send(json!({"conversationID": "nope", "message": "hi"}))),
            "conversationID"
        );
    }
}
