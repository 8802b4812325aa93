//! A feed's joins and leaves: a join is decided at the feed's own seq (a departure it
//! delivered after the handler's membership check refuses it) and attached at the end of the
//! socket's replay, caught up from the recently delivered events; no log read happens here.

use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;

use crate::feed::{Feed, Member};
use crate::registry::{FeedCommand, JoinOutcome, JoinRequest};

/// How long a memberless feed waits for the next round of a join it sent back.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

impl Feed {
    pub(crate) async fn on_leave(&mut self, sid: Sid) {
        if let Some(member) = self.members.remove(&sid) {
            self.announce_presence(&member.user).await;
        }
    }

    pub(crate) async fn on_command(&mut self, command: FeedCommand) {
        match command {
            FeedCommand::Join(request) => {
                let user = request.user.clone();
                let (reply, outcome) = self.attach(*request);
                let joined = matches!(outcome, JoinOutcome::Joined { .. });
                if matches!(outcome, JoinOutcome::Stale | JoinOutcome::Behind { .. }) {
                    self.linger = Some(tokio::time::Instant::now() + LINGER);
                }
                let _ = reply.send(outcome);
                let sockets_of_user = self.members.values().filter(|m| m.user == user).count();
                if joined && sockets_of_user == 1 {
                    self.announce_presence(&user).await;
                }
            }
            FeedCommand::Typing(signal) => {
                self.relay_typing(signal.sid, signal.user, signal.typing)
                    .await
            }
        }
    }

    /// Decides a join at this feed's seq and attaches the socket, catching it up from its
    /// replay's end to the delivered seq out of the recent events.
    fn attach(
        &mut self,
        request: JoinRequest,
    ) -> (tokio::sync::oneshot::Sender<JoinOutcome>, JoinOutcome) {
        let JoinRequest {
            socket,
            user,
            checked_at,
            has_upto,
            history_floor,
            reply,
        } = request;
        if checked_at < self.started_at {
            return (reply, JoinOutcome::Stale);
        }
        if let Some((seq, false)) = self.changes.get(&user)
            && *seq > checked_at
        {
            return (reply, JoinOutcome::NotMember);
        }
        let floor = match has_upto {
            None => self.delivered.max(history_floor - 1),
            Some(upto) if upto >= self.delivered => upto,
            Some(upto) => match self.catch_up(&socket, upto) {
                Ok(()) => self.delivered,
                Err(outcome) => return (reply, outcome),
            },
        };
        self.members.insert(
            socket.id,
            Member {
                socket,
                user,
                floor,
                admitted_at: checked_at,
            },
        );
        (reply, JoinOutcome::Joined { last_seq: floor })
    }

    /// Sends the recent events after `upto` to a joining socket.
    fn catch_up(&self, socket: &SocketRef, upto: i64) -> Result<(), JoinOutcome> {
        let held_from = self.recent.front().map_or(i64::MAX, |r| r.seq);
        if held_from > upto + 1 {
            return Err(JoinOutcome::Behind {
                upto: self.delivered,
            });
        }
        for event in self.recent.iter().filter(|r| r.seq > upto) {
            if socket.emit(event.kind.as_str(), &event.payload).is_err() {
                return Err(JoinOutcome::SlowConsumer);
            }
            metrics::counter!("allo_events_replayed_total").increment(1);
        }
        Ok(())
    }
}
