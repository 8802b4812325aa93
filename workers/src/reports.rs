//! The reports pool. A report goes to the moderators (their own subject and socket room, with
//! the reporter's id); the conversation never learns who reported. Enough distinct reporters
//! hide the message pending review (`messageDeleted` with reason `hidden`); a moderator
//! restores it (`messageRestored`) or removes it for good (`messageDeleted`, reason `removed`).
//! What the room sees of all this is done by the system: no reporter, no moderator, no command
//! id. A report keeps the message as it was (for moderators) only while it is open; the
//! moderators' notice carries no content (it is stored on the event stream): they read it in
//! the moderation queue.

use allo_common::error::ErrorCode;
use allo_common::event::{EventType, UserNotice};
use allo_common::ops::message_ref::MessageRef;
use allo_common::ops::reports::{MODERATOR_ROLE, ReportMessage, Resolution, ResolveReport};
use serde_json::json;

use crate::error::ApplyError;
use crate::messages::{
    Erasure, erase, message_json, participant_and_message, refuse_with, withdraw_from_stream,
};
use crate::unit::Unit;

fn require_moderator(unit: &Unit<'_>) -> Result<(), ApplyError> {
    if unit.envelope.roles.iter().any(|r| r == MODERATOR_ROLE) {
        Ok(())
    } else {
        Err(refuse_with(
            ErrorCode::Forbidden,
            "only moderators may do this",
        ))
    }
}

pub async fn report(
    unit: &mut Unit<'_>,
    c: &ReportMessage,
) -> Result<serde_json::Value, ApplyError> {
    let (_, _, message) = participant_and_message(unit, c.target).await?;
    let reporter = unit.envelope.actor.clone();
    if message.author_id == reporter.as_str() {
        return Err(refuse_with(
            ErrorCode::Invalid,
            "you cannot report your own message",
        ));
    }
    if message.deleted {
        return Err(refuse_with(
            ErrorCode::Conflict,
            "the message is already deleted",
        ));
    }
    let snapshot = message_json(unit, c.target.message_id).await?;
    let inserted = sqlx::query(
        "INSERT INTO reports (id, message_id, conversation_id, reporter_id, reason, details, snapshot)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id, reporter_id) DO NOTHING",
    )
    .bind(c.report_id)
    .bind(c.target.message_id)
    .bind(c.target.conversation_id)
    .bind(reporter.as_str())
    .bind(json!(c.reason).as_str().unwrap_or("other"))
    .bind(c.details.as_ref().map(|d| d.as_str()))
    .bind(&snapshot)
    .execute(&mut *unit.tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(refuse_with(
            ErrorCode::Conflict,
            "you already reported this message",
        ));
    }
    let reporters: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reports WHERE message_id = $1 AND status = 'open'",
    )
    .bind(c.target.message_id)
    .fetch_one(&mut *unit.tx)
    .await?;
    let hide = reporters >= unit.limits.reports_hide_threshold;
    if hide {
        let newly_hidden = sqlx::query(
            "UPDATE messages SET hidden_at = now() WHERE id = $1 AND hidden_at IS NULL",
        )
        .bind(c.target.message_id)
        .execute(&mut *unit.tx)
        .await?
        .rows_affected()
            == 1;
        if newly_hidden {
            withdraw_from_stream(unit, c.target.conversation_id, c.target.message_id).await?;
            let data = json!({"messageId": c.target.message_id, "reason": "hidden"});
            unit.emit_system(c.target.conversation_id, EventType::MessageDeleted, data)
                .await?;
        }
    }
    unit.moderator_notices.push(UserNotice {
        kind: "messageReported".into(),
        data: json!({
            "reportId": c.report_id,
            "messageId": c.target.message_id,
            "conversationID": c.target.conversation_id,
            "reporter": reporter,
            "reason": c.reason,
            "details": c.details,
            "openReports": reporters,
            "hidden": hide,
        }),
    });
    Ok(json!({"reportId": c.report_id, "messageId": c.target.message_id, "status": "open"}))
}

pub async fn resolve(
    unit: &mut Unit<'_>,
    c: &ResolveReport,
) -> Result<serde_json::Value, ApplyError> {
    require_moderator(unit)?;
    let row: Option<(
        allo_common::ids::MessageId,
        allo_common::ids::ConversationId,
        String,
    )> = sqlx::query_as(
        "SELECT message_id, conversation_id, status FROM reports WHERE id = $1 FOR UPDATE",
    )
    .bind(c.report_id)
    .fetch_optional(&mut *unit.tx)
    .await?;
    let Some((message, conversation, status)) = row else {
        return Err(refuse_with(ErrorCode::NotFound, "no such report"));
    };
    if status != "open" {
        return Err(refuse_with(
            ErrorCode::Conflict,
            format!("the report is already {status}"),
        ));
    }
    let moderator = unit.envelope.actor.clone();
    match c.action {
        Resolution::Dismiss => {
            sqlx::query("UPDATE reports SET status = 'dismissed', resolved_by = $2, resolved_at = now(), snapshot = NULL WHERE id = $1")
                .bind(c.report_id)
                .bind(moderator.as_str())
                .execute(&mut *unit.tx)
                .await?;
        }
        Resolution::Remove => {
            // Every open report of the message is settled by its removal.
            sqlx::query(
                "UPDATE reports SET status = 'removed', resolved_by = $2, resolved_at = now(), snapshot = NULL
                 WHERE message_id = $1 AND status = 'open'",
            )
            .bind(message)
            .bind(moderator.as_str())
            .execute(&mut *unit.tx)
            .await?;
            // The room learns that moderation removed it, not who did.
            let how = Erasure::Deleted {
                by: None,
                reason: "removed",
            };
            if let Some(deleted_at) = erase(unit, conversation, message, how).await? {
                let data =
                    json!({"messageId": message, "reason": "removed", "deletedAt": deleted_at});
                unit.emit_system(conversation, EventType::MessageDeleted, data)
                    .await?;
            }
        }
    }
    let data = json!({"reportId": c.report_id, "messageId": message, "action": c.action, "resolvedBy": moderator});
    unit.moderator_notices.push(UserNotice {
        kind: "reportResolved".into(),
        data: data.clone(),
    });
    Ok(data)
}

pub async fn restore(unit: &mut Unit<'_>, c: &MessageRef) -> Result<serde_json::Value, ApplyError> {
    require_moderator(unit)?;
    let restored = sqlx::query(
        "UPDATE messages SET hidden_at = NULL WHERE id = $1 AND conversation_id = $2 AND hidden_at IS NOT NULL AND deleted_at IS NULL",
    )
    .bind(c.message_id)
    .bind(c.conversation_id)
    .execute(&mut *unit.tx)
    .await?
    .rows_affected()
        == 1;
    if !restored {
        return Err(refuse_with(
            ErrorCode::Conflict,
            "that message is not hidden",
        ));
    }
    let moderator = unit.envelope.actor.clone();
    sqlx::query(
        "UPDATE reports SET status = 'dismissed', resolved_by = $2, resolved_at = now(), snapshot = NULL
         WHERE message_id = $1 AND status = 'open'",
    )
    .bind(c.message_id)
    .bind(moderator.as_str())
    .execute(&mut *unit.tx)
    .await?;
    let message = message_json(unit, c.message_id).await?;
    let seq = unit
        .emit_system(c.conversation_id, EventType::MessageRestored, message)
        .await?;
    // No copy of the content in the moderator's result: the event is a system event (no
    // command id), so erasure could not tie the result to the message.
    Ok(json!({"messageId": c.message_id, "restored": true, "seq": seq}))
}
