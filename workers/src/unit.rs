//! One command's transaction. [`Unit::emit`] hands out the conversation's next `seq` under the
//! conversation row's lock, so concurrent workers cannot skip or repeat a seq, and writes the
//! event row in the same transaction as the change it describes.

use allo_common::command::CommandEnvelope;
use allo_common::config::Limits;
use allo_common::event::{Actor, EventEnvelope, EventType, UserNotice};
use allo_common::ids::{ConversationId, EventId};
use chrono::Utc;
use sqlx::PgConnection;

pub struct Unit<'a> {
    pub tx: &'a mut PgConnection,
    pub envelope: &'a CommandEnvelope,
    /// The rules' bounds (e.g. the unsend window).
    pub limits: &'a Limits,
    pub events: Vec<EventEnvelope>,
    /// Messages for moderators' sockets, published after commit (they are not conversation
    /// events: the room never sees them).
    pub moderator_notices: Vec<UserNotice>,
}

impl<'a> Unit<'a> {
    pub fn new(
        tx: &'a mut PgConnection,
        envelope: &'a CommandEnvelope,
        limits: &'a Limits,
    ) -> Self {
        Self {
            tx,
            envelope,
            limits,
            events: Vec::new(),
            moderator_notices: Vec::new(),
        }
    }

    /// Appends an event to the conversation's log and returns its seq.
    pub async fn emit(
        &mut self,
        conversation: ConversationId,
        kind: EventType,
        data: serde_json::Value,
    ) -> Result<i64, sqlx::Error> {
        let seq = self.reserve_seq(conversation).await?;
        self.record(conversation, seq, kind, data).await?;
        Ok(seq)
    }

    /// Appends an event that names no user (actor `null`, no command id): what a vote, a hide
    /// by reports, a moderator's decision or an expiry shows the room (see docs/nats.md,
    /// "Who an event names").
    pub async fn emit_system(
        &mut self,
        conversation: ConversationId,
        kind: EventType,
        data: serde_json::Value,
    ) -> Result<i64, sqlx::Error> {
        let seq = self.reserve_seq(conversation).await?;
        self.write(conversation, seq, kind, data, Actor::System)
            .await?;
        Ok(seq)
    }

    /// Takes the conversation's next seq (locking its row until commit), for a change that
    /// needs its seq before its event exists (a message takes its event's seq).
    pub async fn reserve_seq(&mut self, conversation: ConversationId) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
        )
        .bind(conversation)
        .fetch_one(&mut *self.tx)
        .await
    }

    /// Writes the event for a reserved seq, done by the command's actor.
    pub async fn record(
        &mut self,
        conversation: ConversationId,
        seq: i64,
        kind: EventType,
        data: serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        let actor = Actor::User(self.envelope.actor.clone());
        self.write(conversation, seq, kind, data, actor).await
    }

    async fn write(
        &mut self,
        conversation: ConversationId,
        seq: i64,
        kind: EventType,
        data: serde_json::Value,
        actor: Actor,
    ) -> Result<(), sqlx::Error> {
        // A system event carries no command id either: the command would tie it to its user.
        let command_id = match actor {
            Actor::User(_) => Some(self.envelope.command_id),
            Actor::System => None,
        };
        let event = EventEnvelope {
            event_id: EventId::generate(),
            kind,
            conversation_id: conversation,
            seq,
            command_id,
            actor,
            at: Utc::now(),
            data,
        };
        sqlx::query(
            "WITH e AS (
                 INSERT INTO events (id, conversation_id, seq, type, command_id, actor_id, at, data)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, conversation_id, seq)
             INSERT INTO event_outbox (event_id, conversation_id, seq)
             SELECT id, conversation_id, seq FROM e",
        )
        .bind(event.event_id)
        .bind(conversation)
        .bind(seq)
        .bind(kind.as_str())
        .bind(event.command_id)
        .bind(event.actor.user().map(|u| u.as_str()))
        .bind(event.at)
        .bind(&event.data)
        .execute(&mut *self.tx)
        .await?;
        self.events.push(event);
        Ok(())
    }
}
