//! `joinConversation`: `{conversationID}`. Whether the caller may join is the worker's call
//! (it depends on the conversation's kind and the caller's history in it).

use serde::{Deserialize, Serialize};

use super::{ParseContext, RequestError, parse_id};
use crate::command::Command;
use crate::ids::ConversationId;

#[derive(Debug, Deserialize)]
pub struct JoinConversationRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinConversation {
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
}

pub fn parse(
    req: JoinConversationRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::JoinConversation(JoinConversation {
        conversation_id: parse_id(
            "conversationID",
            &req.conversation_id,
            ConversationId::parse,
        )?,
    }))
}
