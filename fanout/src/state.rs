//! The fan-out's shared state: config, Postgres (membership checks), NATS, and the
//! conversation subscriptions this process holds.

use std::collections::HashMap;

use allo_common::Settings;
use allo_common::auth::TokenKeys;
use allo_common::event::{EventEnvelope, UserNotice};
use allo_common::ids::{ConversationId, UserId};
use allo_common::subjects::Subjects;
use futures::StreamExt;
use socketioxide::SocketIo;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub struct Fanout {
    pub settings: Settings,
    pub db: PgPool,
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub keys: TokenKeys,
    /// One NATS subscription task per conversation some local socket joined.
    subscriptions: Mutex<HashMap<ConversationId, JoinHandle<()>>>,
}

/// The Socket.IO room of a conversation.
pub fn conversation_room(id: ConversationId) -> String {
    format!("c:{id}")
}

/// The Socket.IO room of every moderator's sockets.
pub const MODERATORS_ROOM: &str = "moderators";

/// The Socket.IO room of a user's sockets.
pub fn user_room(user: &UserId) -> String {
    format!("u:{}", user.as_str())
}

impl Fanout {
    pub fn new(settings: Settings, db: PgPool, nats: async_nats::Client) -> Self {
        Self {
            subjects: Subjects::new(&settings.subject_prefix),
            keys: TokenKeys::from_secret(&settings.jwt_secret),
            settings,
            db,
            nats,
            subscriptions: Mutex::new(HashMap::new()),
        }
    }

    pub async fn readiness(&self) -> (bool, bool) {
        let nats = self.nats.connection_state() == async_nats::connection::State::Connected;
        let postgres = sqlx::query("SELECT 1").execute(&self.db).await.is_ok();
        (nats, postgres)
    }

    /// Whether `user` is an active participant of `conversation`.
    pub async fn is_participant(
        &self,
        conversation: ConversationId,
        user: &UserId,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM participants WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL)",
        )
        .bind(conversation)
        .bind(user.as_str())
        .fetch_one(&self.db)
        .await
    }

    /// Makes sure this process receives the conversation's events, then runs `join` (adding the
    /// socket to the room) under the same lock, so a concurrent last-leave cannot unsubscribe
    /// in between.
    pub async fn subscribe_and(
        &self,
        io: &SocketIo,
        conversation: ConversationId,
        join: impl FnOnce(),
    ) -> Result<(), async_nats::SubscribeError> {
        let mut subs = self.subscriptions.lock().await;
        if let std::collections::hash_map::Entry::Vacant(slot) = subs.entry(conversation) {
            let subscriber = self
                .nats
                .subscribe(self.subjects.conversation_events(conversation))
                .await?;
            slot.insert(tokio::spawn(relay_conversation(
                io.clone(),
                conversation,
                subscriber,
            )));
        }
        join();
        Ok(())
    }

    /// Drops the conversation's subscription if no local socket but `leaving` is in its room.
    pub async fn unsubscribe_if_unused(
        &self,
        io: &SocketIo,
        conversation: ConversationId,
        leaving: socketioxide::socket::Sid,
    ) {
        let mut subs = self.subscriptions.lock().await;
        let still_used = io
            .to(conversation_room(conversation))
            .sockets()
            .iter()
            .any(|s| s.id != leaving);
        if !still_used && let Some(task) = subs.remove(&conversation) {
            task.abort();
        }
    }

    /// Relays moderator notices (`messageReported`, `reportResolved`) to the local sockets whose
    /// token carries the `moderator` role.
    pub async fn spawn_moderator_relay(
        &self,
        io: SocketIo,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut subscriber = self.nats.subscribe(self.subjects.all_moderators()).await?;
        tokio::spawn(async move {
            while let Some(msg) = subscriber.next().await {
                let Ok(notice) = serde_json::from_slice::<UserNotice>(&msg.payload) else {
                    tracing::warn!(subject = %msg.subject, "undecodable moderator notice dropped");
                    continue;
                };
                if let Err(e) = io.to(MODERATORS_ROOM).emit(notice.kind, &notice.data).await {
                    tracing::debug!(error = %e, "emit to moderators failed");
                }
            }
        });
        Ok(())
    }

    /// Relays user-addressed subjects (conversationCreated to each participant, `error` to
    /// the actor) to the local user rooms.
    pub async fn spawn_user_relay(&self, io: SocketIo) -> Result<(), async_nats::SubscribeError> {
        let mut subscriber = self.nats.subscribe(self.subjects.all_users()).await?;
        let subjects = self.subjects.clone();
        tokio::spawn(async move {
            while let Some(msg) = subscriber.next().await {
                let Some((user, kind)) = subjects.parse_user_subject(&msg.subject) else {
                    continue;
                };
                let payload = if kind == "error" {
                    serde_json::from_slice::<UserNotice>(&msg.payload)
                        .ok()
                        .map(|n| n.data)
                } else {
                    serde_json::from_slice::<EventEnvelope>(&msg.payload)
                        .ok()
                        .map(|e| e.socket_payload())
                };
                let Some(payload) = payload else {
                    tracing::warn!(subject = %msg.subject, "undecodable user event dropped");
                    continue;
                };
                if let Err(e) = io.to(user_room(&user)).emit(kind, &payload).await {
                    tracing::debug!(error = %e, "emit to user room failed");
                }
            }
        });
        Ok(())
    }
}

/// Emits each event of one conversation to its room, under the event's type.
async fn relay_conversation(
    io: SocketIo,
    conversation: ConversationId,
    mut subscriber: async_nats::Subscriber,
) {
    let room = conversation_room(conversation);
    while let Some(msg) = subscriber.next().await {
        let Ok(event) = serde_json::from_slice::<EventEnvelope>(&msg.payload) else {
            tracing::warn!(subject = %msg.subject, "undecodable event dropped");
            continue;
        };
        if let Err(e) = io
            .to(room.clone())
            .emit(event.kind.as_str(), &event.socket_payload())
            .await
        {
            tracing::debug!(error = %e, "emit to conversation room failed");
        }
    }
}
