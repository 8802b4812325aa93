//! [`SocketClient`]: the npm `socket.io-client` (tests/js/client.mjs) driven over stdio.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::workspace_root;

pub struct SocketClient {
    _child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Events that arrived while we waited for something else.
    backlog: VecDeque<Value>,
    next_id: u64,
    /// Every event the server sent since the last [`SocketClient::clear_seen`], whether the
    /// test has read it or not (for [`crate::Stack::assert_nowhere`]).
    seen: Arc<Mutex<Vec<Value>>>,
}

impl SocketClient {
    /// Connects; `Err` carries the server's `connect_error` message.
    pub async fn connect(url: &str, token: &str) -> Result<SocketClient, String> {
        Self::connect_over(url, token, "polling,websocket").await
    }

    /// Connects with the npm client's `transports` option (`websocket`: no polling first).
    pub async fn connect_over(
        url: &str,
        token: &str,
        transports: &str,
    ) -> Result<SocketClient, String> {
        let js = workspace_root().join("tests/js");
        let mut child = Command::new("node")
            .arg(js.join("client.mjs"))
            .args([url, token, transports])
            .current_dir(&js)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("node: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if value["kind"] == "event"
                    && let Ok(mut seen) = record.lock()
                {
                    seen.push(value.clone());
                }
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut client = SocketClient {
            _child: child,
            stdin,
            lines,
            backlog: VecDeque::new(),
            next_id: 0,
            seen,
        };
        let first = tokio::time::timeout(Duration::from_secs(15), client.lines.recv())
            .await
            .map_err(|_| "no connect within 15 s".to_string())?
            .ok_or("client exited")?;
        match first["kind"].as_str() {
            Some("connected") => Ok(client),
            _ => Err(first["message"]
                .as_str()
                .unwrap_or("connect failed")
                .to_string()),
        }
    }

    /// Emits `event` with an ack callback and returns the server's acknowledgement. No ack
    /// within the client's timeout fails the test (it is never handed back as a value).
    pub async fn emit(&mut self, event: &str, data: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let line = json!({"id": id, "emit": event, "data": data}).to_string() + "\n";
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to client");
        loop {
            let line = tokio::time::timeout(Duration::from_secs(15), self.lines.recv())
                .await
                .expect("ack within 15 s")
                .expect("client alive");
            if line["kind"] == "ack" && line["id"] == id {
                assert!(
                    line["timeout"] != true,
                    "no ack for `{event}` {data}: {}",
                    line["data"]
                );
                return line["data"].clone();
            }
            self.backlog.push_back(line);
        }
    }

    /// Emits `event` without waiting for its ack (a client that floods the server); the ack
    /// arrives later as a line of kind `ack` with the returned id.
    pub async fn send(&mut self, event: &str, data: Value) -> u64 {
        self.next_id += 1;
        let line = json!({"id": self.next_id, "emit": event, "data": data}).to_string() + "\n";
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to client");
        self.next_id
    }

    /// Emits a command event and asserts the ack accepted it; returns the ack.
    pub async fn command(&mut self, event: &str, data: Value) -> Value {
        let ack = self.emit(event, data.clone()).await;
        assert!(
            ack["commandId"].is_string()
                && ack["status"] == "accepted"
                && ack.get("error").is_none(),
            "`{event}` {data} not accepted: {ack}"
        );
        ack
    }

    /// The node process (to stop it with SIGSTOP, as a client that stops reading).
    pub fn pid(&self) -> Option<u32> {
        self._child.id()
    }

    /// Joins a conversation and asserts the server admitted the socket.
    pub async fn join(&mut self, conversation: &str) -> Value {
        let ack = self
            .emit("joinConversation", json!({"conversationID": conversation}))
            .await;
        assert_eq!(ack["joined"], true, "join refused: {ack}");
        ack
    }

    /// The next event named `name` (others are kept), or `None` after `within`.
    pub async fn next_named(&mut self, name: &str, within: Duration) -> Option<Value> {
        if let Some(pos) = self
            .backlog
            .iter()
            .position(|l| l["kind"] == "event" && l["event"] == name)
        {
            return self.backlog.remove(pos).map(|l| l["data"].clone());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .ok()??;
            if line["kind"] == "event" && line["event"] == name {
                return Some(line["data"].clone());
            }
            self.backlog.push_back(line);
        }
    }

    /// The first event named `name` whose payload satisfies `pred` (others are kept).
    pub async fn next_matching(
        &mut self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Option<Value> {
        let matches = |l: &Value| l["kind"] == "event" && l["event"] == name && pred(&l["data"]);
        if let Some(pos) = self.backlog.iter().position(matches) {
            return self.backlog.remove(pos).map(|l| l["data"].clone());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .ok()??;
            if matches(&line) {
                return Some(line["data"].clone());
            }
            self.backlog.push_back(line);
        }
    }

    /// The event `name` about message `message_id`; panics if it does not come.
    pub async fn event_about(&mut self, name: &str, message_id: &str) -> Value {
        self.next_matching(
            name,
            |d| d["messageId"] == message_id,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|| panic!("no `{name}` event for {message_id}; got {:?}", self.backlog))
    }

    /// The next line of kind `kind` (`disconnect`, ...), or `None` after `within`.
    pub async fn next_kind(&mut self, kind: &str, within: Duration) -> Option<Value> {
        if let Some(pos) = self.backlog.iter().position(|l| l["kind"] == kind) {
            return self.backlog.remove(pos);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .ok()??;
            if line["kind"] == kind {
                return Some(line);
            }
            self.backlog.push_back(line);
        }
    }

    /// Every event received since the last [`SocketClient::clear_seen`] (`{event, data}`).
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Forgets what [`SocketClient::seen`] returns so far (e.g. what arrived live before an
    /// erasure, which no server can take back).
    pub fn clear_seen(&self) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.clear();
        }
    }

    /// What arrived but was not asked for yet (for failure messages).
    pub fn backlog(&self) -> Vec<Value> {
        self.backlog.iter().cloned().collect()
    }

    /// Collects `n` events named `name`, failing the test if they do not come in time.
    pub async fn collect(&mut self, name: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_named(name, left).await {
                Some(e) => events.push(e),
                None => panic!("got {} of {n} `{name}` events", events.len()),
            }
        }
        events
    }
}
