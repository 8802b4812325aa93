//! The polls pool's commands: `createPoll {userID?, conversationID, question, options,
//! multipleChoice?, closesAt?}` (2-10 distinct, non-empty options), `votePoll
//! {conversationID, messageId, optionIndex}` (from 0, as in the original) and `closePoll
//! {conversationID, messageId}` (the author).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::message_ref::MessageRef;
use super::{ParseContext, RequestError, check_is_caller, parse_id};
use crate::command::Command;
use crate::ids::{ConversationId, MessageId};
use crate::text::{MessageText, Topic};

/// Most options a poll may have (and so the largest `optionIndex` + 1).
pub const POLL_MAX_OPTIONS: usize = 10;

#[derive(Debug, Deserialize)]
pub struct CreatePollRequest {
    #[serde(rename = "userID", default)]
    pub user_id: Option<String>,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    pub question: String,
    pub options: Vec<String>,
    #[serde(rename = "multipleChoice", default)]
    pub multiple_choice: bool,
    #[serde(rename = "closesAt", default)]
    pub closes_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePoll {
    #[serde(rename = "messageId")]
    pub message_id: MessageId,
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    pub question: MessageText,
    pub options: Vec<Topic>,
    #[serde(rename = "multipleChoice")]
    pub multiple_choice: bool,
    #[serde(rename = "closesAt")]
    pub closes_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
pub struct VotePollRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
    #[serde(rename = "optionIndex")]
    pub option_index: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VotePoll {
    #[serde(flatten)]
    pub target: MessageRef,
    #[serde(rename = "optionIndex")]
    pub option_index: u32,
}

#[derive(Debug, Deserialize)]
pub struct ClosePollRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
}

fn target(conversation_id: &str, message_id: &str) -> Result<MessageRef, RequestError> {
    Ok(MessageRef {
        conversation_id: parse_id("conversationID", conversation_id, ConversationId::parse)?,
        message_id: parse_id("messageId", message_id, MessageId::parse)?,
    })
}

pub fn parse_create(
    req: CreatePollRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    check_is_caller("userID", req.user_id.as_deref(), ctx.caller)?;
    let limits = ctx.limits;
    if !(2..=POLL_MAX_OPTIONS).contains(&req.options.len()) {
        return Err(RequestError::invalid(
            "options",
            format!("a poll has 2-{POLL_MAX_OPTIONS} options"),
        ));
    }
    let mut seen = HashSet::new();
    let mut options = Vec::with_capacity(req.options.len());
    for (i, raw) in req.options.iter().enumerate() {
        let option = Topic::parse(raw, limits.poll_option_max_chars)
            .map_err(|m| RequestError::invalid(format!("options[{i}]"), m))?;
        if !seen.insert(option.as_str().to_lowercase()) {
            return Err(RequestError::invalid(
                format!("options[{i}]"),
                "options must be distinct",
            ));
        }
        options.push(option);
    }
    let closes_at = match req.closes_at.as_deref() {
        None => None,
        Some(raw) => {
            let at =
                super::scheduler::parse_future_time("closesAt", raw, limits.schedule_horizon_secs)?;
            if at <= Utc::now() {
                return Err(RequestError::invalid("closesAt", "must be in the future"));
            }
            Some(at)
        }
    };
    Ok(Command::CreatePoll(CreatePoll {
        message_id: ctx.command_id.message_id(),
        conversation_id: parse_id(
            "conversationID",
            &req.conversation_id,
            ConversationId::parse,
        )?,
        question: MessageText::parse(&req.question, limits.poll_question_max_chars)
            .map_err(|m| RequestError::invalid("question", m))?,
        options,
        multiple_choice: req.multiple_choice,
        closes_at,
    }))
}

pub fn parse_vote(req: VotePollRequest, _ctx: &ParseContext<'_>) -> Result<Command, RequestError> {
    if req.option_index as usize >= POLL_MAX_OPTIONS {
        return Err(RequestError::invalid(
            "optionIndex",
            format!("must be between 0 and {}", POLL_MAX_OPTIONS - 1),
        ));
    }
    Ok(Command::VotePoll(VotePoll {
        target: target(&req.conversation_id, &req.message_id)?,
        option_index: req.option_index,
    }))
}

pub fn parse_close(
    req: ClosePollRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::ClosePoll(target(
        &req.conversation_id,
        &req.message_id,
    )?))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use serde_json::json;

    #[test]
    fn poll_rules() {
        let conv = uuid::Uuid::now_v7().to_string();
        let create = |v: serde_json::Value| {
            let mut body = json!({"conversationID": conv, "question": "Lunch?"});
            body.as_object_mut()
                .unwrap()
                .extend(v.as_object().unwrap().clone());
            parse("createPoll", body, "alice")
        };
        assert!(create(json!({"options": ["Pizza", "Sushi"]})).is_ok());
        assert_eq!(field_of(create(json!({"options": ["Pizza"]}))), "options");
        assert_eq!(
            field_of(create(
                json!({"options": ["a","b","c","d","e","f","g","h","i","j","k"]})
            )),
            "options"
        );
        assert_eq!(
            field_of(create(json!({"options": ["Pizza", "pizza"]}))),
            "options[1]"
        );
        assert_eq!(
            field_of(create(json!({"options": ["Pizza", " "]}))),
            "options[1]"
        );
        assert_eq!(
            field_of(create(
                json!({"options": ["a", "b"], "closesAt": "2020-01-01T00:00:00Z"})
            )),
            "closesAt"
        );
        let m = uuid::Uuid::now_v7().to_string();
        let vote = |i: serde_json::Value| {
            parse(
                "votePoll",
                json!({"conversationID": conv, "messageId": m, "optionIndex": i}),
                "a",
            )
        };
        assert!(vote(json!(0)).is_ok());
        assert_eq!(field_of(vote(json!(-1))), "optionIndex");
        assert_eq!(field_of(vote(json!(10))), "optionIndex");
        assert_eq!(field_of(vote(json!("1"))), "optionIndex");
    }
}
