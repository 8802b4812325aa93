//! Load client of `bench/connections.sh`: many idle Socket.IO sockets from one process.
//!
//! The npm `socket.io-client` costs too much per socket to hold tens of thousands from one
//! machine, so this speaks the wire protocol directly: Engine.IO v4 over a websocket
//! (`/socket.io/?EIO=4&transport=websocket`, no polling), Socket.IO v5 packets on top
//! (`40{auth}` connect, `42[..]` events, `43<id>[..]` acks). Each socket binds its own source
//! address in 127.0.0.0/8 before connecting, so the client is not limited to the ~28,000
//! ephemeral ports of one address.
//!
//! Subcommands (one JSON line per result on stdout):
//! - `create`: makes the conversations through the server's HTTP API (`createConversation`,
//!   `Prefer: wait`), user `i` in conversation `i % conversations`; writes their ids.
//! - `hold`: connects users `first..first+count`, each authenticated (HS256 JWT) and joined to
//!   its conversation, then holds them (answering pings) until SIGTERM; prints `ready` once all
//!   joined, and on SIGUSR1 a `report` of deliveries since the last one (latency of `message`
//!   events whose text is `lat:<unix µs>`).
//! - `post`: posts `sendMessage` at a fixed rate (open loop) into random conversations, each by
//!   the conversation's first member, with the scheduled send time in the text.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser)]
#[command(about = "Socket.IO connection-scale load client (bench/connections.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the conversations through the HTTP API and writes their ids, one per line.
    Create {
        #[arg(long)]
        api: String,
        #[arg(long)]
        secret: String,
        /// Prefix of the user ids (`<run>-u<i>`).
        #[arg(long)]
        run: String,
        #[arg(long)]
        users: usize,
        #[arg(long)]
        conversations: usize,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Connects, authenticates and joins users `first..first+count`, then holds the sockets.
    Hold {
        /// The Socket.IO server, `http://host:port`.
        #[arg(long)]
        url: String,
        #[arg(long)]
        secret: String,
        #[arg(long)]
        run: String,
        /// The conversation ids (`create`'s output); user `i` joins line `i % lines`.
        #[arg(long)]
        ids: std::path::PathBuf,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        /// Source addresses are 127.<src-net>.x.y, a new one every `per-address` sockets.
        #[arg(long, default_value_t = 10)]
        src_net: u8,
        #[arg(long, default_value_t = 4000)]
        per_address: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// On SIGUSR1, also write the latencies (µs, one a line) since the last report here.
        #[arg(long)]
        lat_out: Option<std::path::PathBuf>,
    },
    /// Posts `sendMessage` at `rate` per second for `secs` seconds into random conversations.
    Post {
        #[arg(long)]
        api: String,
        #[arg(long)]
        secret: String,
        #[arg(long)]
        run: String,
        #[arg(long)]
        ids: std::path::PathBuf,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        secs: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Create {
            api,
            secret,
            run,
            users,
            conversations,
            out,
            concurrency,
        } => create(&api, &secret, &run, users, conversations, &out, concurrency).await,
        Command::Hold {
            url,
            secret,
            run,
            ids,
            first,
            count,
            src_net,
            per_address,
            concurrency,
            lat_out,
        } => {
            let plan = Plan {
                ids: read_ids(&ids)?,
                secret,
                run,
                src_net,
                per_address: per_address.max(1),
                server: server_addr(&url)?,
                url,
            };
            hold(Arc::new(plan), first, count, concurrency, lat_out).await
        }
        Command::Post {
            api,
            secret,
            run,
            ids,
            rate,
            secs,
        } => post(&api, &secret, &run, &read_ids(&ids)?, rate, secs).await,
    }
}

fn user(run: &str, i: usize) -> String {
    format!("{run}-u{i}")
}

fn token(secret: &str, sub: &str) -> anyhow::Result<String> {
    let exp = unix_micros() / 1_000_000 + 6 * 3600;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn read_ids(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        bail!("{} holds no conversation id", path.display());
    }
    Ok(ids)
}

fn server_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .context("the url must be http://host:port")?;
    rest.trim_end_matches('/')
        .parse()
        .with_context(|| format!("{url}: expected http://<ipv4>:<port>"))
}

fn print(line: Value) {
    println!("{line}");
}

// --- create ---------------------------------------------------------------------------------

async fn create(
    api: &str,
    secret: &str,
    run: &str,
    users: usize,
    conversations: usize,
    out: &std::path::Path,
    concurrency: usize,
) -> anyhow::Result<()> {
    if conversations == 0 || conversations > users {
        bail!("need 1 <= conversations <= users");
    }
    let started = Instant::now();
    let http = reqwest::Client::new();
    let results = futures::stream::iter(0..conversations)
        .map(|c| {
            let http = http.clone();
            async move {
                let members: Vec<String> = (c..users).step_by(conversations).map(|i| user(run, i)).collect();
                let body = json!({"participants": &members[1..], "type": "group", "topic": format!("conn {c}")});
                let res = http
                    .post(format!("{api}/api/chat/createConversation"))
                    .bearer_auth(token(secret, &members[0])?)
                    .header("prefer", "wait=30")
                    .json(&body)
                    .send()
                    .await?;
                let status = res.status();
                let answer: Value = res.json().await.unwrap_or(Value::Null);
                match answer["conversationID"].as_str() {
                    Some(id) if status.is_success() => Ok(id.to_string()),
                    _ => bail!("createConversation {c}: {status} {answer}"),
                }
            }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<anyhow::Result<String>>>()
        .await;
    let ids = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::write(out, ids.join("\n") + "\n")?;
    print(
        json!({"event": "created", "conversations": ids.len(), "secs": started.elapsed().as_secs_f64()}),
    );
    Ok(())
}

// --- hold -----------------------------------------------------------------------------------

struct Plan {
    ids: Vec<String>,
    secret: String,
    run: String,
    src_net: u8,
    per_address: usize,
    server: SocketAddr,
    url: String,
}

impl Plan {
    fn source(&self, i: usize) -> Ipv4Addr {
        let k = i / self.per_address;
        Ipv4Addr::new(127, self.src_net, (k / 250) as u8, (k % 250 + 1) as u8)
    }
}

#[derive(Default)]
struct Stats {
    joined: AtomicU64,
    failed: AtomicU64,
    disconnected: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Delivery latencies (µs) since the last report.
    latencies: Mutex<Vec<u32>>,
}

impl Stats {
    fn error(&self, e: &anyhow::Error) {
        // The first words name the kind (keeps the map small across thousands of sockets).
        let kind: String = format!("{e:#}").chars().take(80).collect();
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(kind).or_default() += 1;
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn hold(
    plan: Arc<Plan>,
    first: usize,
    count: usize,
    concurrency: usize,
    lat_out: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::default());
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut handshakes = Vec::with_capacity(count);
    for i in first..first + count {
        let (plan, stats, gate) = (plan.clone(), stats.clone(), gate.clone());
        let (done, joined) = tokio::sync::oneshot::channel::<()>();
        handshakes.push(joined);
        tokio::spawn(async move {
            let ws = {
                let Ok(_permit) = gate.acquire().await else {
                    return;
                };
                let mut last = None;
                let mut ws = None;
                for _ in 0..3 {
                    match tokio::time::timeout(Duration::from_secs(30), connect_and_join(&plan, i))
                        .await
                    {
                        Ok(Ok(socket)) => {
                            ws = Some(socket);
                            break;
                        }
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => last = Some(anyhow::anyhow!("no join within 30 s")),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                match ws {
                    Some(ws) => ws,
                    None => {
                        if let Some(e) = last {
                            stats.error(&e);
                        }
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        drop(done);
                        return;
                    }
                }
            };
            stats.joined.fetch_add(1, Ordering::Relaxed);
            let _ = done.send(());
            idle(ws, &stats).await;
            stats.disconnected.fetch_add(1, Ordering::Relaxed);
        });
    }
    for joined in handshakes {
        let _ = joined.await;
    }
    let errors = stats.errors.lock().map(|e| e.clone()).unwrap_or_default();
    print(json!({
        "event": "ready", "first": first, "count": count,
        "joined": stats.joined.load(Ordering::Relaxed), "failed": stats.failed.load(Ordering::Relaxed),
        "secs": started.elapsed().as_secs_f64(), "errors": errors,
    }));
    let mut report = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = report.recv() => print(report_line(&stats, lat_out.as_deref())?),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Exiting closes every socket at once (the server sees the transports close).
    Ok(())
}

fn report_line(stats: &Stats, lat_out: Option<&std::path::Path>) -> anyhow::Result<Value> {
    let mut lat = stats
        .latencies
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    lat.sort_unstable();
    if let Some(path) = lat_out {
        let lines: String = lat.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let idx = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[idx]) / 1000.0
    };
    Ok(json!({
        "event": "report",
        "joined": stats.joined.load(Ordering::Relaxed),
        "disconnected": stats.disconnected.load(Ordering::Relaxed),
        "deliveries": lat.len(), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0),
    }))
}

async fn connect_and_join(plan: &Plan, i: usize) -> anyhow::Result<Ws> {
    let tcp = TcpSocket::new_v4()?;
    tcp.bind(SocketAddr::new(plan.source(i).into(), 0))
        .context("bind")?;
    let stream = tcp.connect(plan.server).await.context("connect")?;
    stream.set_nodelay(true)?;
    // Small buffers: this process holds thousands of idle sockets.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        plan.url.trim_start_matches("http://").trim_end_matches('/')
    );
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("websocket handshake")?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected an Engine.IO open packet, got {open}");
    }
    let user = user(&plan.run, i);
    let auth = json!({"token": token(&plan.secret, &user)?});
    ws.send(Message::text(format!("40{auth}"))).await?;
    loop {
        let packet = next_text(&mut ws).await?;
        if packet.starts_with("40") {
            break;
        }
        if let Some(error) = packet.strip_prefix("44") {
            bail!("connect_error {error}");
        }
    }
    let conversation = &plan.ids[i % plan.ids.len()];
    let join = json!(["joinConversation", {"conversationID": conversation}]);
    ws.send(Message::text(format!("420{join}"))).await?;
    loop {
        let packet = next_text(&mut ws).await?;
        if let Some(ack) = packet.strip_prefix("430") {
            let ack: Value = serde_json::from_str(ack).context("ack")?;
            if ack[0]["joined"] != true {
                bail!("join refused: {}", ack[0]);
            }
            return Ok(ws);
        }
    }
}

/// The next text frame that is not an Engine.IO ping (pings are answered here).
async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if text.as_str() == "2" {
                    ws.send(Message::text("3")).await?;
                    continue;
                }
                return Ok(text.as_str().to_string());
            }
            Some(Ok(Message::Close(_))) | None => bail!("closed by the server"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Answers pings and records `message` latencies until the server closes the socket.
async fn idle(mut ws: Ws, stats: &Stats) {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else {
            if matches!(msg, Message::Close(_)) {
                return;
            }
            continue;
        };
        let text = text.as_str();
        if text == "2" {
            if ws.send(Message::text("3")).await.is_err() {
                return;
            }
        } else if let Some(event) = text.strip_prefix("42")
            && let Some(sent) = latency_mark(event)
        {
            let micros = unix_micros().saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
            if let Ok(mut lat) = stats.latencies.lock() {
                lat.push(micros);
            }
        }
    }
}

/// The send time carried by a `message` event's text (`lat:<unix µs>`).
fn latency_mark(event: &str) -> Option<u64> {
    if !event.starts_with("[\"message\"") {
        return None;
    }
    let at = event.find("\"lat:")? + 5;
    let digits: String = event[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

// --- post -----------------------------------------------------------------------------------

async fn post(
    api: &str,
    secret: &str,
    run: &str,
    ids: &[String],
    rate: f64,
    secs: f64,
) -> anyhow::Result<()> {
    if rate <= 0.0 {
        bail!("rate must be > 0");
    }
    // Conversation c's first member is user c (see `create`).
    let tokens: Vec<String> = (0..ids.len())
        .map(|c| token(secret, &user(run, c)))
        .collect::<anyhow::Result<_>>()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let total = (rate * secs) as u64;
    let started = Instant::now();
    let mut seed = unix_micros() | 1;
    let mut inflight = Vec::new();
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        // xorshift: a random conversation without another dependency.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let c = (seed % ids.len() as u64) as usize;
        // The scheduled time, not the actual send: a late client is charged to the latency.
        let mark = unix_micros() - due.elapsed().as_micros() as u64;
        let req = http
            .post(format!("{api}/api/chat/sendMessage"))
            .bearer_auth(&tokens[c])
            .json(&json!({"conversationID": ids[c], "message": format!("lat:{mark}")}));
        let statuses = statuses.clone();
        inflight.push(tokio::spawn(async move {
            let status = match req.send().await {
                Ok(res) => res.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            if let Ok(mut s) = statuses.lock() {
                *s.entry(status).or_default() += 1;
            }
        }));
    }
    let sent_secs = started.elapsed().as_secs_f64();
    for task in inflight {
        let _ = task.await;
    }
    let statuses = statuses.lock().map(|s| s.clone()).unwrap_or_default();
    print(
        json!({"event": "posted", "posts": total, "rate": total as f64 / sent_secs, "statuses": statuses}),
    );
    Ok(())
}
