//! [`Stack::assert_nowhere`]: one search, for a string (a secret text, a user id, a command id),
//! of every path a client or a backend subscriber has: the HTTP reads, the event log, socket
//! replay, what live sockets received, the NATS event stream read directly, and the database
//! rows. The privacy suite states each promise with it.

use std::time::Duration;

use allo_common::subjects::Subjects;
use serde_json::{Value, json};

use crate::{SocketClient, Stack};

/// Where to look, and what counts.
pub struct Look<'a> {
    /// The conversation whose reads, log and replay are searched.
    pub conversation: &'a str,
    /// Users whose HTTP reads and replays (a fresh socket resuming from seq 0) are searched.
    pub viewers: &'a [&'a str],
    /// Sockets that listened live: everything they received since their `clear_seen`.
    pub live: &'a [&'a SocketClient],
    /// Only events of these types count (for an identity, which is legitimately elsewhere: a
    /// participant's id in `participantJoined`). Empty: everything counts, every read and
    /// every table.
    pub event_types: &'a [&'a str],
    /// Tables where the string may stay, each for a reason the test states (a hidden message
    /// keeps its text for the moderator who may restore it).
    pub allowed_tables: &'a [&'a str],
    /// Only what the viewers are served (reads, replays, live sockets): for a promise about an
    /// audience (a late joiner), not about erasure, since the stream and the tables keep it.
    pub reads_only: bool,
}

impl<'a> Look<'a> {
    /// Everything, as the given viewers, with these live sockets.
    pub fn everywhere(
        conversation: &'a str,
        viewers: &'a [&'a str],
        live: &'a [&'a SocketClient],
    ) -> Self {
        Self {
            conversation,
            viewers,
            live,
            event_types: &[],
            allowed_tables: &[],
            reads_only: false,
        }
    }

    fn counts(&self, kind: &str) -> bool {
        self.event_types.is_empty() || self.event_types.contains(&kind)
    }
}

/// How long erasure on the event stream may take (it runs after commit, in the relay's rounds).
const ERASURE_WITHIN: Duration = Duration::from_secs(10);

impl Stack {
    /// Fails the test if `secret` appears on any path of `look` (see the module doc). Waits up
    /// to ten seconds for it to vanish, as stream erasure follows the commit.
    pub async fn assert_nowhere(&self, secret: &str, look: &Look<'_>) {
        let deadline = tokio::time::Instant::now() + ERASURE_WITHIN;
        loop {
            let found = self.find_everywhere(secret, look).await;
            if found.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("`{secret}` is still readable:\n{}", found.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Where `secret` is found, one line per place.
    pub async fn find_everywhere(&self, secret: &str, look: &Look<'_>) -> Vec<String> {
        let mut found = Vec::new();
        for viewer in look.viewers {
            found.extend(self.find_in_reads(secret, look, viewer).await);
            found.extend(self.find_in_replay(secret, look, viewer).await);
        }
        for (i, socket) in look.live.iter().enumerate() {
            for line in socket.seen() {
                let kind = line["event"].as_str().unwrap_or_default();
                if look.counts(kind) && line.to_string().contains(secret) {
                    found.push(format!("live socket {i}: {line}"));
                }
            }
        }
        if !look.reads_only {
            found.extend(self.find_in_stream(secret, look).await);
            found.extend(self.find_in_tables(secret, look).await);
        }
        found
    }

    async fn find_in_reads(&self, secret: &str, look: &Look<'_>, viewer: &str) -> Vec<String> {
        let token = self.token(viewer);
        let c = look.conversation;
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get(
                    Some(&token),
                    &format!("/api/conversations/{c}/events?after={after}&limit=100"),
                )
                .await;
            assert_eq!(page.status, 200, "event log as {viewer}: {:?}", page.body);
            for event in page.body["events"].as_array().cloned().unwrap_or_default() {
                let kind = event["type"].as_str().unwrap_or_default();
                if look.counts(kind) && event.to_string().contains(secret) {
                    found.push(format!("event log as {viewer}: {event}"));
                }
            }
            match page.body["next"]["after"].as_i64() {
                Some(next) => after = next,
                None => break,
            }
        }
        if !look.event_types.is_empty() {
            return found;
        }
        let mut paths = vec![
            "/api/conversations".to_string(),
            format!("/api/conversations/{c}"),
            format!("/api/conversations/{c}/pins"),
            "/api/scheduled".to_string(),
        ];
        let history = self
            .get(
                Some(&token),
                &format!("/api/conversations/{c}/messages?limit=100"),
            )
            .await;
        for message in history.body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let id = message["messageId"].as_str().unwrap_or_default();
            paths.push(format!("/api/conversations/{c}/messages/{id}"));
            if message["kind"] == "poll" {
                paths.push(format!("/api/conversations/{c}/polls/{id}"));
            }
        }
        if history.body.to_string().contains(secret) {
            found.push(format!("history as {viewer}: {}", history.body));
        }
        for path in paths {
            let reply = self.get(Some(&token), &path).await;
            if reply.body.to_string().contains(secret) {
                found.push(format!("{path} as {viewer}: {}", reply.body));
            }
        }
        found
    }

    async fn find_in_replay(&self, secret: &str, look: &Look<'_>, viewer: &str) -> Vec<String> {
        let mut socket = self.socket(viewer).await;
        let ack = socket
            .emit(
                "joinConversation",
                json!({"conversationID": look.conversation, "lastSeq": 0}),
            )
            .await;
        assert_eq!(ack["joined"], true, "replay refused to {viewer}: {ack}");
        // The replayed events come before the ack on the same socket.
        socket
            .seen()
            .into_iter()
            .filter(|line| look.counts(line["event"].as_str().unwrap_or_default()))
            .filter(|line| line.to_string().contains(secret))
            .map(|line| format!("replay to {viewer}: {line}"))
            .collect()
    }

    /// Every message of the event stream, read directly (what any backend subscriber gets).
    async fn find_in_stream(&self, secret: &str, look: &Look<'_>) -> Vec<String> {
        let js = async_nats::jetstream::new(self.nats.clone());
        let name = Subjects::of(&self.settings).event_stream();
        let mut stream = js.get_stream(&name).await.expect("event stream");
        let (messages, first, last) = {
            let state = &stream.info().await.expect("event stream info").state;
            (state.messages, state.first_sequence, state.last_sequence)
        };
        let mut found = Vec::new();
        if messages == 0 {
            return found;
        }
        for seq in first..=last {
            let Ok(msg) = stream.get_raw_message(seq).await else {
                continue; // deleted
            };
            let payload: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
            let kind = payload["type"].as_str().unwrap_or_default();
            let text = String::from_utf8_lossy(&msg.payload);
            if look.counts(kind) && text.contains(secret) {
                found.push(format!("stream {name} #{seq} {}: {text}", msg.subject));
            }
        }
        found
    }

    /// Every row of every table (bytea columns as UTF-8), or only the `events` rows of the
    /// counted types.
    async fn find_in_tables(&self, secret: &str, look: &Look<'_>) -> Vec<String> {
        if !look.event_types.is_empty() {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT e::text FROM events e WHERE e.type = ANY($2) AND strpos(e::text, $1) > 0",
            )
            .bind(secret)
            .bind(look.event_types)
            .fetch_all(&self.db)
            .await
            .expect("search events");
            return rows
                .into_iter()
                .map(|r| format!("events row: {r}"))
                .collect();
        }
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
               AND table_name NOT LIKE '\\_sqlx%'",
        )
        .fetch_all(&self.db)
        .await
        .expect("list tables");
        let mut found = Vec::new();
        for table in tables {
            if look.allowed_tables.contains(&table.as_str()) {
                continue;
            }
            let bytea: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = $1 AND data_type = 'bytea'",
            )
            .bind(&table)
            .fetch_all(&self.db)
            .await
            .expect("list columns");
            let mut test = "strpos(t::text, $1) > 0".to_string();
            for column in bytea {
                test += &format!(" OR strpos(convert_from({column}, 'UTF8'), $1) > 0");
            }
            let sql = format!("SELECT t::text FROM {table} t WHERE {test}");
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(secret)
                .fetch_all(&self.db)
                .await
                .expect("search table");
            found.extend(rows.into_iter().map(|r| format!("{table} row: {r}")));
        }
        found
    }
}
