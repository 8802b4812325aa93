//! The send family: only active participants send; the message takes the seq of its `message`
//! event; the event carries the message as reads show it. This is the one-command path (used
//! by the scheduler's dispatch and when a batch falls back); [`crate::send_batch`] applies runs
//! of sends with set-based statements and shares [`MessageColumns`] with it.

use allo_common::event::EventType;
use allo_common::ops::message_send::{MessageContent, SendMessage};
use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::{message_json, require_participant};
use crate::error::ApplyError;
use crate::unit::Unit;

pub async fn apply(unit: &mut Unit<'_>, c: &SendMessage) -> Result<serde_json::Value, ApplyError> {
    insert(unit, c, None).await
}

/// The `messages` columns a send sets, from its content.
pub(crate) struct MessageColumns<'a> {
    pub kind: &'static str,
    pub body: Option<&'a str>,
    pub attachments: serde_json::Value,
    pub encrypted: Option<bool>,
    pub encryption_algorithm: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl<'a> MessageColumns<'a> {
    /// `created_at` is when ingress accepted the command: an ephemeral message's lifetime
    /// counts from the sender's clock, not from when the queue got to it.
    pub fn of(content: &'a MessageContent, created_at: DateTime<Utc>) -> Self {
        let plain = |kind, body, attachments| Self {
            kind,
            body,
            attachments,
            encrypted: None,
            encryption_algorithm: None,
            signature: None,
            expires_at: None,
        };
        match content {
            MessageContent::Text { message } => plain("text", Some(message.as_str()), json!([])),
            MessageContent::Secure {
                ciphertext,
                encrypted,
                encryption_algorithm,
                signature,
            } => Self {
                encrypted: Some(*encrypted),
                encryption_algorithm: Some(encryption_algorithm.as_str()),
                signature: signature.as_deref(),
                ..plain("secure", Some(ciphertext.as_str()), json!([]))
            },
            MessageContent::Voice { url, caption } => plain(
                "voice",
                caption.as_ref().map(|c| c.as_str()),
                json!([{"type": "voice", "url": url}]),
            ),
            MessageContent::Sticker { url } => {
                plain("sticker", None, json!([{"type": "sticker", "url": url}]))
            }
            MessageContent::Ephemeral {
                message,
                expires_in_ms,
            } => Self {
                expires_at: Some(created_at + Duration::milliseconds(*expires_in_ms as i64)),
                ..plain("text", Some(message.as_str()), json!([]))
            },
        }
    }
}

/// Sends a message; `scheduled_at` marks one sent by the scheduler (its due time).
pub async fn insert(
    unit: &mut Unit<'_>,
    c: &SendMessage,
    scheduled_at: Option<DateTime<Utc>>,
) -> Result<serde_json::Value, ApplyError> {
    let author = unit.envelope.actor.clone();
    require_participant(unit, c.conversation_id, &author).await?;
    let created_at = unit.envelope.at;
    let columns = MessageColumns::of(&c.content, created_at);
    let seq = unit.reserve_seq(c.conversation_id).await?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, author_id, kind, body, attachments, encrypted,
                               encryption_algorithm, signature, expires_at, created_at, command_id, scheduled_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(c.message_id)
    .bind(c.conversation_id)
    .bind(seq)
    .bind(author.as_str())
    .bind(columns.kind)
    .bind(columns.body)
    .bind(&columns.attachments)
    .bind(columns.encrypted)
    .bind(columns.encryption_algorithm)
    .bind(columns.signature)
    .bind(columns.expires_at)
    .bind(created_at)
    .bind(unit.envelope.command_id)
    .bind(scheduled_at)
    .execute(&mut *unit.tx)
    .await?;
    let message = message_json(unit, c.message_id).await?;
    unit.record(c.conversation_id, seq, EventType::Message, message.clone())
        .await?;
    Ok(message)
}
