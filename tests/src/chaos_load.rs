//! The chaos run's clients: users who each hold a socket (an [`Observer`] on one of the
//! fan-out replicas, moving to the other when theirs dies) and send commands at a fixed
//! overall rate, over HTTP (with an `Idempotency-Key`, retried on the other API replica until
//! a 202) or over their socket. Everything the run is judged on is recorded here, as the
//! clients saw it: what was accepted, when it was first tried, what each socket received.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::sio::Observer;

/// One command as its client knows it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub user: String,
    pub operation: &'static str,
    /// The unique text of a command that creates a message (send, schedule, poll question).
    pub text: Option<String>,
    /// `Some` once the service accepted it (202, or an accepting socket ack).
    pub command_id: Option<String>,
    pub first_try: Instant,
    /// Attempts (HTTP requests, or socket emits after 503/429 acks).
    pub attempts: u32,
    /// Refused by ingress (status), or a socket command whose ack never came (`Some(0)`).
    pub refused: Option<u16>,
    /// The refusal's body, to tell what was wrong.
    pub note: Option<String>,
}

/// What the clients recorded, shared by their tasks.
#[derive(Default)]
pub struct Record {
    pub sent: Mutex<Vec<Sent>>,
    /// Messages someone already reported (each is reported once, so none is hidden).
    reported: Mutex<HashSet<String>>,
}

/// A user of the run: name, conversation, socket.
pub struct User {
    pub name: String,
    pub token: String,
    pub conversation: String,
    pub socket: Observer,
    /// Sends over its socket instead of HTTP.
    pub via_socket: bool,
}

/// Sends commands for `user` until `stop`, one every `every` from `offset` on (users start
/// at spread offsets, so the load is a steady stream, not bursts), in the mix of the pools.
pub async fn send_loop(
    user: Arc<User>,
    api_urls: Arc<Vec<String>>,
    (offset, every): (Duration, Duration),
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut next = Instant::now() + offset;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        n += 1;
        let (operation, body, text) = command(&user, n, &record);
        let sent = if user.via_socket && operation == "sendMessage" {
            via_socket(&user, operation, body, text).await
        } else {
            let key = format!("{}-{n}", user.name);
            via_http(&http, &user, &api_urls, &key, operation, body, text).await
        };
        record.sent.lock().expect("record").push(sent);
    }
}

/// The `n`th command of `user`: mostly sends (messages pool), and one in ten each of a
/// scheduled message due now (scheduler), a poll (polls) and a report of someone else's
/// message this user's socket received (reports).
fn command(user: &User, n: u64, record: &Record) -> (&'static str, Value, Option<String>) {
    let c = &user.conversation;
    let text = format!("{}:{n}", user.name);
    match n % 10 {
        3 => (
            "scheduleMessage",
            json!({"conversationID": c, "message": text,
                   "scheduledTime": chrono::Utc::now().to_rfc3339()}),
            Some(text),
        ),
        6 => (
            "createPoll",
            json!({"conversationID": c, "question": text, "options": ["yes", "no"]}),
            Some(text),
        ),
        9 => match report_target(user, record) {
            Some(message_id) => (
                "reportMessage",
                json!({"conversationID": c, "messageId": message_id, "reason": "spam"}),
                None,
            ),
            None => send(c, text),
        },
        _ => send(c, text),
    }
}

fn send(conversation: &str, text: String) -> (&'static str, Value, Option<String>) {
    (
        "sendMessage",
        json!({"conversationID": conversation, "message": text}),
        Some(text),
    )
}

/// A plain message by someone else that this user's socket saw and nobody reported yet.
fn report_target(user: &User, record: &Record) -> Option<String> {
    let log = user.socket.log.lock().ok()?;
    let mut reported = record.reported.lock().ok()?;
    let own = format!("{}:", user.name);
    let target = log.deliveries.iter().rev().find(|d| {
        d.event == "message"
            && d.text.as_ref().is_some_and(|t| !t.starts_with(&own))
            && d.message_id
                .as_ref()
                .is_some_and(|id| !reported.contains(id))
    })?;
    let id = target.message_id.clone()?;
    reported.insert(id.clone());
    Some(id)
}

/// POSTs with the same `Idempotency-Key` until a replica answers 202, moving to the next API
/// replica after every failure (connection refused, 5xx, 429), for up to two minutes.
async fn via_http(
    http: &reqwest::Client,
    user: &User,
    api_urls: &[String],
    key: &str,
    operation: &'static str,
    body: Value,
    text: Option<String>,
) -> Sent {
    let mut sent = Sent {
        user: user.name.clone(),
        operation,
        text,
        command_id: None,
        first_try: Instant::now(),
        attempts: 0,
        refused: None,
        note: None,
    };
    let deadline = sent.first_try + Duration::from_secs(120);
    let mut at = key.len(); // spread first attempts over the replicas
    while Instant::now() < deadline {
        sent.attempts += 1;
        let url = format!("{}/api/chat/{operation}", api_urls[at % api_urls.len()]);
        at += 1;
        let reply = http
            .post(url)
            .bearer_auth(&user.token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await;
        match reply {
            Ok(r) if r.status().as_u16() == 202 => {
                let body: Value = r.json().await.unwrap_or(Value::Null);
                sent.command_id = body["commandId"].as_str().map(String::from);
                if sent.command_id.is_some() {
                    return sent;
                }
            }
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {}
            Ok(r) => {
                sent.refused = Some(r.status().as_u16());
                sent.note = r.text().await.ok();
                return sent;
            }
            Err(_) => {} // the replica is gone: try the other
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sent
}

/// Emits the command on the user's socket, again after a 503 or 429 ack (which says nothing
/// was accepted). No ack at all (the replica died first) leaves the outcome unknown to the
/// client, which does not send it again: it has no key to make that safe.
async fn via_socket(
    user: &User,
    operation: &'static str,
    body: Value,
    text: Option<String>,
) -> Sent {
    let first_try = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let ack = user.socket.emit(operation, body.clone()).await;
        let status = ack.as_ref().map(|a| a["error"]["status"].as_u64());
        let command_id = ack
            .as_ref()
            .filter(|a| a["status"] == "accepted")
            .and_then(|a| a["commandId"].as_str().map(String::from));
        let retry = matches!(status, Some(Some(503 | 429)));
        if retry && first_try.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let refused = match (status, &command_id) {
            (_, Some(_)) => None,
            (None, None) => Some(0),
            (Some(s), None) => Some(s.map_or(1, |s| s as u16)),
        };
        return Sent {
            user: user.name.clone(),
            operation,
            text,
            refused,
            note: ack.map(|a| a.to_string()),
            command_id,
            first_try,
            attempts,
        };
    }
}

/// The first time any socket received each message text.
pub fn first_deliveries(users: &[Arc<User>]) -> HashMap<String, Instant> {
    let mut first: HashMap<String, Instant> = HashMap::new();
    for user in users {
        let Ok(log) = user.socket.log.lock() else {
            continue;
        };
        for d in log.deliveries.iter().filter(|d| d.event == "message") {
            if let Some(text) = &d.text {
                let at = first.entry(text.clone()).or_insert(d.at);
                *at = (*at).min(d.at);
            }
        }
    }
    first
}
