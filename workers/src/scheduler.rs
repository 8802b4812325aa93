//! The scheduler pool. Commands: `scheduleMessage` stores a scheduled message (its sender must
//! be a participant now), `cancelScheduledMessage` cancels a pending one. Loops (in every
//! scheduler process): the dispatcher sends due messages and the sweeper deletes expired
//! ephemeral ones.
//!
//! Exactly once, with any number of processes: each round takes its rows `FOR UPDATE SKIP
//! LOCKED` and applies each (send, or delete) in the same transaction that marks it done. A
//! process killed mid-round rolls back and leaves its rows to the others; one killed after
//! commit leaves unpublished events to the relay.

use std::time::Duration;

use allo_common::command::{Command, CommandEnvelope};
use allo_common::error::ErrorCode;
use allo_common::event::{EventEnvelope, EventType, UserNotice};
use allo_common::ids::{CommandId, ConversationId, MessageId, ScheduledId, UserId};
use allo_common::ops::message_send::{MessageContent, SendMessage};
use allo_common::ops::scheduler::{CancelScheduledMessage, ScheduleMessage};
use allo_common::text::MessageText;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::watch;

use crate::Worker;
use crate::error::ApplyError;
use crate::messages::{Erasure, erase, message_send, refuse_with, require_participant};
use crate::unit::Unit;

pub async fn schedule(
    unit: &mut Unit<'_>,
    c: &ScheduleMessage,
) -> Result<serde_json::Value, ApplyError> {
    let author = unit.envelope.actor.clone();
    require_participant(unit, c.conversation_id, &author).await?;
    // A time in the past means now (as in the original): due when ingress accepted it.
    let due_at = c.scheduled_time.max(unit.envelope.at);
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM scheduled_messages WHERE author_id = $1 AND status = 'pending'",
    )
    .bind(author.as_str())
    .fetch_one(&mut *unit.tx)
    .await?;
    crate::messages::within_total(
        pending,
        unit.limits.scheduled_per_user_max,
        "your pending scheduled messages",
    )?;
    sqlx::query(
        "INSERT INTO scheduled_messages (id, conversation_id, author_id, body, requested_at, due_at, status, command_id)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)",
    )
    .bind(c.scheduled_id)
    .bind(c.conversation_id)
    .bind(author.as_str())
    .bind(c.message.as_str())
    .bind(c.scheduled_time)
    .bind(due_at)
    .bind(unit.envelope.command_id)
    .execute(&mut *unit.tx)
    .await?;
    Ok(json!({
        "scheduledMessageId": c.scheduled_id,
        "conversationID": c.conversation_id,
        "messageId": c.scheduled_id.message_id(),
        "scheduledTime": c.scheduled_time,
        "dueAt": due_at,
        "status": "pending",
    }))
}

pub async fn cancel(
    unit: &mut Unit<'_>,
    c: &CancelScheduledMessage,
) -> Result<serde_json::Value, ApplyError> {
    // FOR UPDATE (not SKIP LOCKED): a cancel waits for a dispatch in progress, then sees "sent".
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT author_id, status FROM scheduled_messages WHERE id = $1 FOR UPDATE")
            .bind(c.scheduled_id)
            .fetch_optional(&mut *unit.tx)
            .await?;
    match row {
        Some((author, _)) if author != unit.envelope.actor.as_str() => Err(refuse_with(
            ErrorCode::NotFound,
            "no such scheduled message",
        )),
        None => Err(refuse_with(
            ErrorCode::NotFound,
            "no such scheduled message",
        )),
        Some((_, status)) if status != "pending" => Err(refuse_with(
            ErrorCode::Conflict,
            format!("the scheduled message is already {status}"),
        )),
        Some(_) => {
            sqlx::query("UPDATE scheduled_messages SET status = 'cancelled' WHERE id = $1")
                .bind(c.scheduled_id)
                .execute(&mut *unit.tx)
                .await?;
            Ok(json!({"scheduledMessageId": c.scheduled_id, "status": "cancelled"}))
        }
    }
}

/// The dispatcher and sweeper of one scheduler process.
pub struct Scheduler {
    worker: Worker,
}

#[derive(sqlx::FromRow)]
struct Due {
    id: ScheduledId,
    conversation_id: ConversationId,
    author_id: String,
    body: String,
    due_at: DateTime<Utc>,
}

impl Scheduler {
    pub fn new(worker: Worker) -> Self {
        Self { worker }
    }

    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let tick = Duration::from_millis(self.worker.settings().worker.scheduler_tick_ms);
        loop {
            // Drain: keep going while rounds are full, then wait for the next tick.
            loop {
                let dispatched = self.dispatch_once().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "dispatch round failed; will retry");
                    0
                });
                let swept = self.sweep_once().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "sweep round failed; will retry");
                    0
                });
                let full = self.worker.settings().worker.scheduler_batch as usize;
                if (dispatched < full && swept < full) || *shutdown.borrow() {
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
        }
    }

    /// Sends one batch of due scheduled messages through the normal send path; returns how many
    /// rows it settled (sent or rejected).
    pub async fn dispatch_once(&self) -> Result<usize, sqlx::Error> {
        let settings = self.worker.settings();
        let mut tx = self.worker.db().begin().await?;
        let due: Vec<Due> = sqlx::query_as(
            "SELECT id, conversation_id, author_id, body, due_at FROM scheduled_messages
             WHERE status = 'pending' AND due_at <= now()
             ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(settings.worker.scheduler_batch)
        .fetch_all(&mut *tx)
        .await?;
        let mut events: Vec<EventEnvelope> = Vec::new();
        let mut rejections = Vec::new();
        for row in &due {
            let (Ok(author), Ok(text)) = (
                UserId::parse(&row.author_id),
                MessageText::try_from(row.body.clone()),
            ) else {
                tracing::error!(scheduled = %row.id, "unreadable scheduled message; rejected");
                continue;
            };
            let send = SendMessage {
                message_id: row.id.message_id(),
                conversation_id: row.conversation_id,
                content: MessageContent::Text { message: text },
            };
            let envelope = CommandEnvelope {
                command_id: row.id.dispatch_command_id(),
                actor: author,
                roles: Vec::new(),
                at: Utc::now(),
                command: Command::SendMessage(send.clone()),
                reply_outcome: false,
            };
            sqlx::query("SAVEPOINT dispatch").execute(&mut *tx).await?;
            let mut unit = Unit::new(&mut tx, &envelope, &settings.limits);
            let sent = message_send::insert(&mut unit, &send, Some(row.due_at)).await;
            let new_events = std::mem::take(&mut unit.events);
            match sent {
                Ok(_) => {
                    sqlx::query("UPDATE scheduled_messages SET status = 'sent', message_id = $2, sent_at = now() WHERE id = $1")
                        .bind(row.id)
                        .bind(send.message_id)
                        .execute(&mut *tx)
                        .await?;
                    events.extend(new_events);
                }
                Err(ApplyError::Rejected(reason)) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT dispatch")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "UPDATE scheduled_messages SET status = 'rejected', error_code = $2, error_message = $3, sent_at = now()
                         WHERE id = $1",
                    )
                    .bind(row.id)
                    .bind(reason.code.as_str())
                    .bind(&reason.message)
                    .execute(&mut *tx)
                    .await?;
                    rejections.push((envelope.actor.clone(), row.id, reason));
                }
                Err(ApplyError::Db(e)) => return Err(e),
            }
        }
        tx.commit().await?;
        metrics::counter!("allo_scheduled_settled_total").increment(due.len() as u64);
        self.worker.publish_events(&events).await;
        for (author, id, reason) in rejections {
            let notice = UserNotice {
                kind: "error".into(),
                data: json!({"scheduledMessageId": id, "operation": "scheduleMessage", "code": reason.code, "message": reason.message}),
            };
            self.worker
                .notify(&author, &notice, format!("scheduled:{id}"))
                .await;
        }
        Ok(due.len())
    }

    /// Deletes one batch of expired ephemeral messages, each with a `messageDeleted` event
    /// (reason `expired`); returns how many.
    pub async fn sweep_once(&self) -> Result<usize, sqlx::Error> {
        let settings = self.worker.settings();
        let mut tx = self.worker.db().begin().await?;
        let expired: Vec<(MessageId, ConversationId, String)> = sqlx::query_as(
            "SELECT id, conversation_id, author_id FROM messages
             WHERE expires_at <= now() AND deleted_at IS NULL AND unsent_at IS NULL
             ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(settings.worker.scheduler_batch)
        .fetch_all(&mut *tx)
        .await?;
        let mut events = Vec::new();
        for (message, conversation, author) in &expired {
            let Ok(author) = UserId::parse(author) else {
                continue;
            };
            let envelope = CommandEnvelope {
                command_id: CommandId(uuid::Uuid::new_v5(&message.0, b"expire")),
                actor: author,
                roles: Vec::new(),
                at: Utc::now(),
                command: Command::DeleteMessage(allo_common::ops::message_ref::MessageRef {
                    conversation_id: *conversation,
                    message_id: *message,
                }),
                reply_outcome: false,
            };
            let mut unit = Unit::new(&mut tx, &envelope, &settings.limits);
            let erased = erase(
                &mut unit,
                *conversation,
                *message,
                Erasure::Deleted {
                    by: None,
                    reason: "expired",
                },
            )
            .await
            .map_err(into_sqlx)?;
            let Some(deleted_at) = erased else { continue };
            let data = json!({"messageId": message, "reason": "expired", "deletedAt": deleted_at});
            unit.emit_system(*conversation, EventType::MessageDeleted, data)
                .await?;
            events.extend(std::mem::take(&mut unit.events));
        }
        tx.commit().await?;
        metrics::counter!("allo_ephemeral_swept_total").increment(expired.len() as u64);
        self.worker.publish_events(&events).await;
        Ok(expired.len())
    }
}

fn into_sqlx(e: ApplyError) -> sqlx::Error {
    match e {
        ApplyError::Db(e) => e,
        ApplyError::Rejected(r) => sqlx::Error::Protocol(r.message),
    }
}
