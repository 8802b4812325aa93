//! [`Observer`]: a Socket.IO client in the test process (Engine.IO v4 over a websocket, as
//! `bench/conn-client` speaks it), for runs with more sockets than node processes would fit
//! on a 2-core machine. It records every conversation event it is sent, and when its fan-out
//! goes away it does what a real client does: connects to the next replica and joins each
//! conversation again with the last `seq` it saw, so the fan-out replays what it missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One conversation event as the client saw it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub conversation: String,
    pub seq: i64,
    pub event: String,
    /// The `message` event's text or poll question (the load's unique marker), if any.
    pub text: Option<String>,
    pub message_id: Option<String>,
    pub at: Instant,
}

/// What one socket saw over its whole life, across reconnects.
#[derive(Default, Debug)]
pub struct SocketLog {
    pub deliveries: Vec<Delivery>,
    /// Sessions after the first (a replica died or cut the socket off).
    pub reconnects: u32,
    /// The highest seq seen per conversation: what a rejoin resumes from.
    pub last_seq: HashMap<String, i64>,
    /// Joins the server acknowledged as joined, over all sessions.
    pub joined: u32,
    /// Why each session ended (for a failing test's report).
    pub session_ends: Vec<String>,
}

struct Emit {
    event: String,
    data: Value,
    /// `None`: the session ended before the ack (the outcome is unknown to the client).
    reply: oneshot::Sender<Option<Value>>,
}

/// A reconnecting, resuming socket of one user, joined to some conversations.
pub struct Observer {
    pub log: Arc<Mutex<SocketLog>>,
    emits: mpsc::UnboundedSender<Emit>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Connects to `urls[first]` (the next one after each failure) and joins `joins`
    /// (conversation -> the seq it has already seen).
    pub fn spawn(
        urls: Arc<Vec<String>>,
        first: usize,
        token: String,
        joins: HashMap<String, i64>,
    ) -> Observer {
        let log = Arc::new(Mutex::new(SocketLog {
            last_seq: joins,
            ..Default::default()
        }));
        let (emits, mut rx) = mpsc::unbounded_channel();
        let shared = log.clone();
        let task = tokio::spawn(async move {
            let mut at = first;
            let mut sessions = 0u32;
            loop {
                if sessions > 0
                    && let Ok(mut log) = shared.lock()
                {
                    log.reconnects += 1;
                }
                sessions += 1;
                let url = &urls[at % urls.len()];
                let end = match session(url, &token, &shared, &mut rx).await {
                    Ok(()) => "closed by the server".to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::debug!(url, end, "socket session ended");
                if let Ok(mut log) = shared.lock() {
                    log.session_ends.push(format!("{url}: {end}"));
                }
                at += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Observer { log, emits, task }
    }

    /// Emits `event` and waits for its ack; `None` when the session ended first.
    pub async fn emit(&self, event: &str, data: Value) -> Option<Value> {
        let (reply, rx) = oneshot::channel();
        self.emits
            .send(Emit {
                event: event.into(),
                data,
                reply,
            })
            .ok()?;
        tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .ok()?
            .ok()?
    }

    /// The highest seq seen in `conversation`.
    pub fn last_seq(&self, conversation: &str) -> i64 {
        self.log
            .lock()
            .map(|l| l.last_seq.get(conversation).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: handshake, (re)join every conversation from its last seq, then record
/// events and carry emits until the server goes away.
async fn session(
    url: &str,
    token: &str,
    log: &Mutex<SocketLog>,
    rx: &mut mpsc::UnboundedReceiver<Emit>,
) -> anyhow::Result<()> {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(host).await?;
    let ws_url = format!("ws://{host}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url, stream).await?;
    ws.send(Message::text(format!("40{}", json!({"token": token}))))
        .await?;
    let joins: Vec<(String, i64)> = {
        let log = log.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        log.last_seq.iter().map(|(c, s)| (c.clone(), *s)).collect()
    };
    let mut next_id = 0u64;
    let mut pending: HashMap<u64, Option<oneshot::Sender<Option<Value>>>> = HashMap::new();
    let mut connected = false;
    let outcome = loop {
        tokio::select! {
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t.as_str().to_string(),
                    Some(Ok(Message::Close(_))) | None => break Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(e.into()),
                };
                if text == "2" {
                    ws.send(Message::text("3")).await?;
                } else if text.starts_with("40") && !connected {
                    connected = true;
                    for (conversation, seq) in &joins {
                        next_id += 1;
                        pending.insert(next_id, None);
                        let join = json!(["joinConversation", {"conversationID": conversation, "lastSeq": seq}]);
                        ws.send(Message::text(format!("42{next_id}{join}"))).await?;
                    }
                } else if let Some(err) = text.strip_prefix("44") {
                    break Err(anyhow::anyhow!("connect_error {err}"));
                } else if let Some(event) = text.strip_prefix("42") {
                    record(log, event);
                } else if let Some(ack) = text.strip_prefix("43") {
                    let digits: String = ack.chars().take_while(char::is_ascii_digit).collect();
                    let body: Value = serde_json::from_str(&ack[digits.len()..]).unwrap_or(Value::Null);
                    match pending.remove(&digits.parse().unwrap_or(0)) {
                        Some(Some(reply)) => { let _ = reply.send(Some(body[0].clone())); }
                        // A rejoin the server refused: this client cannot see what it should.
                        Some(None) if body[0]["joined"] != true => {
                            break Err(anyhow::anyhow!("join refused: {body}"));
                        }
                        Some(None) => {
                            if let Ok(mut log) = log.lock() {
                                log.joined += 1;
                            }
                        }
                        _ => {}
                    }
                }
            }
            emit = rx.recv(), if connected => {
                let Some(emit) = emit else { break Ok(()) };
                if emit.reply.is_closed() {
                    continue; // its sender gave up on it: sending it now would be a surprise
                }
                next_id += 1;
                let packet = json!([emit.event, emit.data]);
                pending.insert(next_id, Some(emit.reply));
                ws.send(Message::text(format!("42{next_id}{packet}"))).await?;
            }
        }
    };
    // Whatever was not acked has an unknown outcome: its senders are told so by the drop.
    drop(pending);
    let _ = close(&mut ws).await;
    outcome
}

async fn close(ws: &mut Ws) -> anyhow::Result<()> {
    ws.close(None).await?;
    Ok(())
}

/// Records a conversation event (`["name", {conversationID, seq, ...}]`).
fn record(log: &Mutex<SocketLog>, packet: &str) {
    let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(packet) else {
        return;
    };
    let (Some(name), Some(data)) = (parts.first().and_then(Value::as_str), parts.get(1)) else {
        return;
    };
    let (Some(conversation), Some(seq)) = (data["conversationID"].as_str(), data["seq"].as_i64())
    else {
        return; // user-addressed notices carry no conversation seq
    };
    let Ok(mut log) = log.lock() else { return };
    let last = log.last_seq.entry(conversation.to_string()).or_insert(0);
    *last = (*last).max(seq);
    log.deliveries.push(Delivery {
        conversation: conversation.to_string(),
        seq,
        event: name.to_string(),
        text: data["message"]
            .as_str()
            .or(data["poll"]["question"].as_str())
            .map(String::from),
        message_id: data["messageId"].as_str().map(String::from),
        at: Instant::now(),
    });
}
