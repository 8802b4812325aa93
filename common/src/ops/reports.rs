//! The reports pool's commands: `reportMessage {conversationID, messageId, reason, details?}`
//! (participants; one per reporter per message), and for moderators (JWT role `moderator`)
//! `resolveReport {reportId, action: dismiss|remove}` and `restoreMessage {conversationID,
//! messageId}` (undo the automatic hiding).

use serde::{Deserialize, Serialize};

use super::message_ref::MessageRef;
use super::{ParseContext, RequestError, parse_id};
use crate::command::Command;
use crate::ids::{ConversationId, MessageId, ReportId};
use crate::text::MessageText;

/// The role that opens the moderation queue.
pub const MODERATOR_ROLE: &str = "moderator";

/// Why a message is reported: a fixed list, so moderators can sort and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportReason {
    Spam,
    Harassment,
    Hate,
    Violence,
    Sexual,
    SelfHarm,
    Misinformation,
    Other,
}

#[derive(Debug, Deserialize)]
pub struct ReportMessageRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
    pub reason: ReportReason,
    #[serde(default)]
    pub details: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportMessage {
    #[serde(rename = "reportId")]
    pub report_id: ReportId,
    #[serde(flatten)]
    pub target: MessageRef,
    pub reason: ReportReason,
    pub details: Option<MessageText>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// The report was unfounded: close it (and restore the message if it was hidden).
    Dismiss,
    /// Remove the message (a tombstone, `messageDeleted` with reason `removed`).
    Remove,
}

#[derive(Debug, Deserialize)]
pub struct ResolveReportRequest {
    #[serde(rename = "reportId")]
    pub report_id: String,
    pub action: Resolution,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveReport {
    #[serde(rename = "reportId")]
    pub report_id: ReportId,
    pub action: Resolution,
}

#[derive(Debug, Deserialize)]
pub struct RestoreMessageRequest {
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
}

fn require_moderator(ctx: &ParseContext<'_>) -> Result<(), RequestError> {
    if ctx.caller.has_role(MODERATOR_ROLE) {
        Ok(())
    } else {
        Err(RequestError::Forbidden(
            "only moderators resolve reports and restore messages".into(),
        ))
    }
}

pub fn parse_report(
    req: ReportMessageRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    Ok(Command::ReportMessage(ReportMessage {
        report_id: ctx.command_id.report_id(),
        target: MessageRef {
            conversation_id: parse_id(
                "conversationID",
                &req.conversation_id,
                ConversationId::parse,
            )?,
            message_id: parse_id("messageId", &req.message_id, MessageId::parse)?,
        },
        reason: req.reason,
        details: match req.details.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(
                MessageText::parse(raw, ctx.limits.report_details_max_chars)
                    .map_err(|m| RequestError::invalid("details", m))?,
            ),
        },
    }))
}

pub fn parse_resolve(
    req: ResolveReportRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    require_moderator(ctx)?;
    Ok(Command::ResolveReport(ResolveReport {
        report_id: parse_id("reportId", &req.report_id, ReportId::parse)?,
        action: req.action,
    }))
}

pub fn parse_restore(
    req: RestoreMessageRequest,
    ctx: &ParseContext<'_>,
) -> Result<Command, RequestError> {
    require_moderator(ctx)?;
    Ok(Command::RestoreMessage(MessageRef {
        conversation_id: parse_id(
            "conversationID",
            &req.conversation_id,
            ConversationId::parse,
        )?,
        message_id: parse_id("messageId", &req.message_id, MessageId::parse)?,
    }))
}
