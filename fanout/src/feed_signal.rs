//! A feed's signals between replicas (core NATS, never stored): `typing`, `presence` and the
//! `who` request that `presence` asks every replica.

use allo_common::ids::UserId;
use serde_json::{Value, json};
use socketioxide::socket::Sid;

use crate::feed::Feed;

impl Feed {
    /// Relays a member's typing signal to every replica (a non-member's is dropped).
    pub(crate) async fn relay_typing(&self, sid: Sid, user: UserId, typing: bool) {
        if self.members.contains_key(&sid) {
            let signal = json!({"userID": user, "typing": typing, "replica": self.ctx.replica, "sid": sid.to_string()});
            self.signal("typing", &signal).await;
        }
    }

    async fn signal(&self, kind: &str, body: &Value) {
        let subject = self.ctx.subjects.signal(self.conversation, kind);
        let _ = self
            .ctx
            .nats
            .publish(subject, body.to_string().into())
            .await;
    }

    /// Tells every replica whether `user` is online here (has a socket in this feed).
    pub(crate) async fn announce_presence(&self, user: &UserId) {
        let online = self.members.values().any(|m| &m.user == user);
        self.signal(
            "presence",
            &json!({"userID": user, "online": online, "replica": self.ctx.replica}),
        )
        .await;
    }

    pub(crate) async fn on_signal(&mut self, msg: async_nats::Message) {
        let kind = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let Ok(body) = serde_json::from_slice::<Value>(&msg.payload) else {
            return;
        };
        let conversation = self.conversation.to_string();
        match kind.as_str() {
            "typing" => {
                let origin = (body["replica"].as_str(), body["sid"].as_str());
                let payload = json!({"conversationID": conversation, "userID": body["userID"], "typing": body["typing"]});
                for (sid, member) in &self.members {
                    let own = origin
                        == (
                            Some(self.ctx.replica.as_str()),
                            Some(sid.to_string().as_str()),
                        );
                    if !own {
                        let _ = member.socket.emit("typing", &payload);
                    }
                }
            }
            "presence" => {
                let user = body["userID"].as_str().unwrap_or_default().to_string();
                let online_here = self.members.values().any(|m| m.user.as_str() == user);
                if body["online"] == false
                    && online_here
                    && body["replica"] != self.ctx.replica.as_str()
                {
                    // Offline on that replica, still online here: say so.
                    if let Ok(user) = UserId::parse(&user) {
                        self.announce_presence(&user).await;
                    }
                    return;
                }
                let payload = json!({"conversationID": conversation, "userID": user, "online": body["online"]});
                for member in self.members.values() {
                    let _ = member.socket.emit("presence", &payload);
                }
            }
            "who" => {
                if let Some(reply) = msg.reply {
                    let mut users: Vec<&str> =
                        self.members.values().map(|m| m.user.as_str()).collect();
                    users.sort_unstable();
                    users.dedup();
                    let _ = self
                        .ctx
                        .nats
                        .publish(reply, json!(users).to_string().into())
                        .await;
                }
            }
            _ => {}
        }
    }
}
