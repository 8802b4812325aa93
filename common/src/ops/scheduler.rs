//! The scheduler pool's commands: `scheduleMessage {userID?, conversationID, message,
//! scheduledTime}` (ISO 8601 with an offset; a time in the past means now, as in the
//! original; at most the configured horizon ahead) and `cancelScheduledMessage
//! {scheduledMessageId}`.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{ParseContext, RequestError, check_is_caller, parse_id};
use crate::command::Command;
use crate::ids::{ConversationId, ScheduledId};
use crate::text::MessageText;

#[derive(Debug, Deserialize)]
pub struct ScheduleMessageRequest {
    #[serde(rename = "userID", default)]
    pub user_id: Option<String>,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    pub message: String,
    #[serde(rename = "scheduledTime")]
    pub scheduled_time: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleMessage {
    #[serde(rename = "scheduledMessageId")]
    pub scheduled_id: ScheduledId,
    #[serde(rename = "conversationID")]
    pub conversation_id: ConversationId,
    pub message: MessageText,
    #[serde(rename = "scheduledTime")]
    pub scheduled_time: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
pub struct CancelScheduledMessageRequest {
    #[serde(rename = "scheduledMessageId")]
    pub scheduled_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelScheduledMessage {
    #[serde(rename = "scheduledMessageId")]
    pub scheduled_id: ScheduledId,
}

/// Parses an ISO 8601 / RFC 3339 time with an offset, at most `horizon_secs` from now.
pub fn parse_future_time(
    field: &str,
    raw: &str,
    horizon_secs: u64,
) -> Result<DateTime<Utc>, RequestError> {
    let at = DateTime::parse_from_rfc3339(raw.trim())
        .map_err(|_| {
            RequestError::invalid(
                field,
                "must be an ISO 8601 date-time with an offset, e.g. 2026-12-01T09:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    if at > Utc::now() + Duration::seconds(horizon_secs as i64) {
        return Err(RequestError::invalid(
            field,
            format!("must be at most {} days ahead", horizon_secs / 86_400),
        ));
    }
    Ok(at)
}

pub fn parse_schedule(
    req: ScheduleMessageRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    check_is_caller("userID", req.user_id.as_deref(), ctx.caller)?;
    Ok(Command::ScheduleMessage(ScheduleMessage {
        scheduled_id: ctx.command_id.scheduled_id(),
        conversation_id: parse_id(
            "conversationID",
            &req.conversation_id,
            ConversationId::parse,
        )?,
        message: MessageText::parse(&req.message, ctx.limits.message_max_chars)
            .map_err(|m| RequestError::invalid("message", m))?,
        scheduled_time: parse_future_time(
            "scheduledTime",
            &req.scheduled_time,
            ctx.limits.schedule_horizon_secs,
        )?,
    }))
}

pub fn parse_cancel(
    req: CancelScheduledMessageRequest,
    _ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::CancelScheduledMessage(CancelScheduledMessage {
        scheduled_id: parse_id("scheduledMessageId", &req.scheduled_id, ScheduledId::parse)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use serde_json::json;

    #[test]
    fn scheduled_times() {
        let conv = uuid::Uuid::now_v7().to_string();
        let at = |t: &str| {
            parse(
                "scheduleMessage",
                json!({"conversationID": conv, "message": "later", "scheduledTime": t}),
                "alice",
            )
        };
        assert!(at("2020-01-01T00:00:00Z").is_ok(), "the past means now");
        assert!(at(&(chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339()).is_ok());
        assert_eq!(
            field_of(at(
                &(chrono::Utc::now() + chrono::Duration::days(400)).to_rfc3339()
            )),
            "scheduledTime"
        );
        assert_eq!(field_of(at("tomorrow")), "scheduledTime");
        assert_eq!(field_of(at("2026-12-01T09:00:00")), "scheduledTime");
    }
}
