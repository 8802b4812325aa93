//! Puts committed events on the event stream with `Nats-Msg-Id` = eventId, so a second publish
//! of the same event (worker retry, relay) is dropped by NATS inside the duplicate window.

use allo_common::event::{EventEnvelope, EventType, UserNotice};
use allo_common::ids::{CommandId, UserId};
use allo_common::subjects::Subjects;
use allo_common::trace::{self, TraceContext};
use async_nats::jetstream::{self, message::PublishMessage};

#[derive(Debug, thiserror::Error)]
#[error("publishing to the event stream: {0}")]
pub struct PublishError(#[from] async_nats::jetstream::context::PublishError);

#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    subjects: Subjects,
}

impl Publisher {
    pub fn new(js: jetstream::Context, subjects: Subjects) -> Self {
        Self { js, subjects }
    }

    /// Publishes events in order and waits for every PubAck; returns each event's stream
    /// sequence (of its first copy, if NATS dropped this one as a duplicate), which erasure
    /// deletes it by. `conversationCreated` also goes to each participant's user subject, so
    /// their sockets learn of it without joining first.
    pub async fn events(&self, events: &[EventEnvelope]) -> Result<Vec<u64>, PublishError> {
        self.events_traced(events, |_| None).await
    }

    /// [`Self::events`], each event of a command carrying the command's id and, where
    /// `trace_of` knows it, its trace (`traceparent`) in headers. A system event carries
    /// neither: its command would name the user (docs/nats.md, "Who an event names").
    pub async fn events_traced(
        &self,
        events: &[EventEnvelope],
        trace_of: impl Fn(CommandId) -> Option<TraceContext>,
    ) -> Result<Vec<u64>, PublishError> {
        // (is the event's own copy, ack)
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            // Serializing our own envelope cannot fail.
            let payload = serde_json::to_vec(event).unwrap_or_default();
            let headers = event.command_id.map(|command| {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(trace::COMMAND_ID, command.to_string().as_str());
                if let Some(context) = trace_of(command) {
                    headers.insert(trace::TRACEPARENT, context.header().as_str());
                }
                headers
            });
            let subject = self.subjects.event(event.conversation_id, event.kind);
            let id = event.event_id.to_string();
            acks.push((
                true,
                self.send(subject, id, payload.clone(), headers.clone())
                    .await?,
            ));
            if event.kind == EventType::ConversationCreated {
                for user in participants_of(event) {
                    let subject = self.subjects.user(&user, event.kind.as_str());
                    let id = format!("{}:{}", event.event_id, user.subject_token());
                    let copy = self.send(subject, id, payload.clone(), headers.clone());
                    acks.push((false, copy.await?));
                }
            }
        }
        let mut sequences = Vec::with_capacity(events.len());
        for (own, ack) in acks {
            let ack = ack.await?;
            if own {
                sequences.push(ack.sequence);
            }
        }
        Ok(sequences)
    }

    /// A notice for one user's sockets (an `error` after a rejection).
    pub async fn notice(
        &self,
        user: &UserId,
        notice: &UserNotice,
        id: String,
    ) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(notice).unwrap_or_default();
        self.send(self.subjects.user(user, &notice.kind), id, payload, None)
            .await?
            .await?;
        Ok(())
    }

    /// A notice for every moderator's sockets (`<prefix>.mod.<type>`).
    pub async fn moderators(&self, notice: &UserNotice, id: String) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(notice).unwrap_or_default();
        self.send(self.subjects.moderators(&notice.kind), id, payload, None)
            .await?
            .await?;
        Ok(())
    }

    async fn send(
        &self,
        subject: String,
        id: String,
        payload: Vec<u8>,
        headers: Option<async_nats::HeaderMap>,
    ) -> Result<jetstream::context::PublishAckFuture, PublishError> {
        let mut message = PublishMessage::build();
        if let Some(headers) = headers {
            message = message.headers(headers);
        }
        let message = message.message_id(id).payload(payload.into());
        Ok(self.js.send_publish(subject, message).await?)
    }
}

fn participants_of(event: &EventEnvelope) -> Vec<UserId> {
    event.data["participants"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str())
                .filter_map(|s| UserId::parse(s).ok())
                .collect()
        })
        .unwrap_or_default()
}
