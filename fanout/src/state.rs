//! The fan-out's shared state: config, Postgres (membership checks), NATS, and the
//! conversation subscriptions this process holds.

use allo_common::Settings;
use allo_common::auth::TokenKeys;
use allo_common::event::{EventEnvelope, UserNotice};
use allo_common::ids::{ConversationId, UserId};

use crate::limits::{RateWindows, SocketCounts};
use crate::registry::{FeedContext, Feeds};
use allo_common::subjects::Subjects;
use futures::StreamExt;
use socketioxide::SocketIo;
use sqlx::PgPool;

pub struct Fanout {
    pub settings: Settings,
    pub db: PgPool,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    pub keys: TokenKeys,
    /// One feed per conversation some local socket joined.
    pub feeds: Feeds,
    /// Rate-budget tokens this replica leased and has not spent.
    pub rate_leases: allo_common::ingress::RateLeases,
    /// Open sockets per user (`limits.fanout.sockets_per_user`).
    pub sockets: SocketCounts,
    /// `joinConversation` and `presence` requests per user (`limits.fanout`).
    pub join_rate: RateWindows,
    pub presence_rate: RateWindows,
    /// Replays reading the log at once: half the database pool, so resuming sockets leave
    /// connections for membership checks and the feeds' gap fills.
    pub replays: tokio::sync::Semaphore,
    /// Every socket's token deadline, watched by one task (`crate::token`).
    pub deadlines: crate::token::Deadlines,
}

/// The Socket.IO room of every moderator's sockets.
pub const MODERATORS_ROOM: &str = "moderators";

/// The Socket.IO room of a user's sockets.
pub fn user_room(user: &UserId) -> String {
    format!("u:{}", user.as_str())
}

impl Fanout {
    pub fn new(settings: Settings, keys: TokenKeys, db: PgPool, nats: async_nats::Client) -> Self {
        let subjects = Subjects::of(&settings);
        let feeds = Feeds::new(FeedContext {
            db: db.clone(),
            nats: nats.clone(),
            subjects: subjects.clone(),
            settings: settings.fanout.clone(),
            limits: settings.limits.fanout.clone(),
            replica: uuid::Uuid::new_v4().to_string(),
        });
        let limits = &settings.limits.fanout;
        Self {
            sockets: SocketCounts::default(),
            join_rate: RateWindows::new(limits.joins_per_window, limits.window_secs),
            presence_rate: RateWindows::new(limits.presence_per_window, limits.window_secs),
            replays: tokio::sync::Semaphore::new(
                (settings.database_max_connections as usize / 2).max(1),
            ),
            keys,
            deadlines: Default::default(),
            js: async_nats::jetstream::new(nats.clone()),
            rate_leases: Default::default(),
            subjects,
            settings,
            db,
            nats,
            feeds,
        }
    }

    pub async fn readiness(&self) -> (bool, bool) {
        let nats = self.nats.connection_state() == async_nats::connection::State::Connected;
        let postgres = sqlx::query("SELECT 1").execute(&self.db).await.is_ok();
        (nats, postgres)
    }

    /// The first seq `user` may read in `conversation` (0, or their join's seq where history
    /// visibility is `joined`) and the conversation's last seq, in one snapshot; `None` if they
    /// are not an active participant in it.
    pub async fn membership(
        &self,
        conversation: ConversationId,
        user: &UserId,
    ) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let row: Option<(Option<i64>, i64)> = sqlx::query_as(
            "SELECT history_floor(id, $2), last_seq FROM conversations WHERE id = $1",
        )
        .bind(conversation)
        .bind(user.as_str())
        .fetch_optional(&self.db)
        .await?;
        Ok(row.and_then(|(floor, last)| floor.map(|floor| (floor, last))))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_a_room_of_their_own() {
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(user_room(&alice), "u:alice");
        assert_ne!(user_room(&alice), user_room(&bob));
        assert_ne!(user_room(&alice), MODERATORS_ROOM);
    }
}
