//! The examples under `examples/` run against a live stack, as a reader would run them.
//!
//! `examples/subscriber/subscriber.py` (nats-py, durable JetStream consumer, SQLite state): its
//! per-conversation message counts must equal Postgres's after it was crashed before and after
//! a commit, SIGKILLed while messages flowed, and restarted with work waiting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use allo_e2e::python::examples_python;
use allo_e2e::{NatsUsers, Stack, StackOptions, id, workspace_root};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// NATS redelivers what a crashed subscriber did not ack after this long.
const ACK_WAIT_SECS: u64 = 2;

struct Subscriber {
    python: PathBuf,
    script: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    runs: usize,
}

impl Subscriber {
    fn new(stack: &Stack, state: &Path) -> Subscriber {
        let mut env = vec![
            ("NATS_URL".into(), stack.settings.nats_url.clone()),
            (
                "ALLO_SUBJECT_PREFIX".into(),
                stack.settings.subject_prefix.clone(),
            ),
            ("DURABLE".into(), "message-counter".into()),
            ("STATE_FILE".into(), state.display().to_string()),
            ("ACK_WAIT_SECS".into(), ACK_WAIT_SECS.to_string()),
        ];
        // On a NATS run from nats.conf (scripts/test.sh starts one when none answers), as the
        // harness's user: `allo-subscriber` may read only the default prefix's stream.
        if let Some(password) = NatsUsers::from_env().password("admin") {
            env.push(("NATS_USER".into(), "allo-admin".into()));
            env.push(("NATS_PASSWORD".into(), password.to_string()));
        }
        Subscriber {
            python: examples_python(),
            script: workspace_root().join("examples/subscriber/subscriber.py"),
            env,
            log_dir: stack.log_dir().to_path_buf(),
            runs: 0,
        }
    }

    /// Starts `subscriber.py run` (with `CRASH_AT` if given); its stderr goes to a log file.
    fn start(&mut self, crash_at: Option<&str>) -> (Child, PathBuf) {
        self.runs += 1;
        let log = self.log_dir.join(format!("subscriber-{}.log", self.runs));
        let file = std::fs::File::create(&log).expect("subscriber log");
        let mut command = Command::new(&self.python);
        command
            .arg(&self.script)
            .arg("run")
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true);
        if let Some(at) = crash_at {
            command.env("CRASH_AT", at);
        }
        (command.spawn().expect("python subscriber"), log)
    }

    /// What `subscriber.py counts` reads from the state file.
    async fn counts(&self) -> Value {
        let out = Command::new(&self.python)
            .arg(&self.script)
            .arg("counts")
            .envs(self.env.iter().cloned())
            .output()
            .await
            .expect("subscriber.py counts");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("counts JSON")
    }
}

/// Waits for the subscriber to exit by its own crash hook (status 17).
async fn crashed(mut child: Child, log: &Path) {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("subscriber did not crash; {}", log.display()))
        .expect("wait");
    assert_eq!(status.code(), Some(17), "{}", read(log));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Live messages per conversation, as Allo's history shows them.
async fn postgres_counts(stack: &Stack) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT conversation_id::text, count(*) FILTER (WHERE deleted_at IS NULL AND unsent_at IS NULL AND hidden_at IS NULL)
         FROM messages GROUP BY conversation_id",
    )
    .fetch_all(&stack.db)
    .await
    .expect("counts in Postgres")
    .into_iter()
    .collect()
}

fn subscriber_counts(v: &Value) -> BTreeMap<String, i64> {
    v["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default()
}

/// The durable consumer's backlog: (not yet delivered, delivered and not acked); `None` if
/// there is no such consumer.
async fn backlog(stack: &Stack) -> Option<(u64, usize)> {
    let js = async_nats::jetstream::new(stack.nats.clone());
    let subjects = allo_common::subjects::Subjects::of(&stack.settings);
    let stream = js
        .get_stream(subjects.event_stream())
        .await
        .expect("event stream");
    let info = stream.consumer_info("message-counter").await.ok()?;
    Some((info.num_pending, info.num_ack_pending))
}

async fn send(stack: &Stack, user: &str, conversation: &str, text: &str) -> String {
    let reply = stack
        .post(
            &stack.token(user),
            "sendMessage",
            json!({"conversationID": conversation, "message": text}),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    id(&reply.body, "messageId")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_subscriber_counts_every_message_once_across_crashes_and_restarts() {
    let stack = Stack::start(StackOptions {
        fanout: false,
        ..Default::default()
    })
    .await;
    let state = stack.log_dir().join("message-counts.sqlite");
    let mut subscriber = Subscriber::new(&stack, &state);
    let c1 = stack.create_conversation("alice", "group", &["bob"]).await;
    let c2 = stack.create_conversation("alice", "group", &["bob"]).await;
    let c3 = stack.create_conversation("bob", "group", &["alice"]).await;

    // 1. A crash between commit and ack: the batch comes again and must not count twice.
    for i in 0..4 {
        send(&stack, "alice", &c1, &format!("one {i}")).await;
    }
    stack.wait_pending(0, Duration::from_secs(20)).await;
    let (child, log) = subscriber.start(Some("after-commit"));
    crashed(child, &log).await;

    // 2. A crash before the commit, with new work and the redeliveries of 1 in its batch: what
    // was applied but not committed must come again (an ack before the commit would lose it).
    let doomed = send(&stack, "bob", &c2, "two 0").await;
    send(&stack, "bob", &c2, "two 1").await;
    stack.wait_pending(0, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(ACK_WAIT_SECS) + Duration::from_millis(500)).await;
    let (child, log) = subscriber.start(Some("before-commit"));
    crashed(child, &log).await;

    // 3. SIGKILL while messages flow: once it has applied a batch, mid-stream.
    let (mut child, log) = subscriber.start(None);
    let sends = async {
        for i in 0..30 {
            let conversation = [&c1, &c2, &c3][i % 3];
            send(
                &stack,
                if i % 2 == 0 { "alice" } else { "bob" },
                conversation,
                &format!("three {i}"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    let killer = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !read(&log).contains("applied") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "subscriber applied nothing: {}",
                read(&log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().await.expect("SIGKILL the subscriber");
    };
    tokio::join!(sends, killer);

    // 4. While it is down: deletes, an unsend, a forward, and a message sent and deleted
    // before it could read it (erasure takes the message's event off the stream).
    stack
        .act(
            "bob",
            "deleteMessage",
            json!({"conversationID": c2, "messageId": doomed}),
        )
        .await;
    let unsent = send(&stack, "alice", &c3, "four unsent").await;
    let forwarded = send(&stack, "alice", &c1, "four forwarded").await;
    let erased = send(&stack, "bob", &c3, "four erased").await;
    stack.wait_pending(0, Duration::from_secs(20)).await;
    stack
        .act(
            "alice",
            "unsendMessage",
            json!({"conversationID": c3, "messageId": unsent}),
        )
        .await;
    stack
        .act(
            "alice",
            "forwardMessage",
            json!({"fromConversationID": c1, "toConversationID": c3, "messageId": forwarded}),
        )
        .await;
    stack
        .act(
            "bob",
            "deleteMessage",
            json!({"conversationID": c3, "messageId": erased}),
        )
        .await;

    // 5. Restarted: it catches up and agrees with Postgres.
    let (mut child, log) = subscriber.start(None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (expected, got) = loop {
        let unpublished = stack.count("SELECT count(*) FROM event_outbox").await;
        let expected = postgres_counts(&stack).await;
        let got = subscriber_counts(&subscriber.counts().await);
        if unpublished == 0 && backlog(&stack).await == Some((0, 0)) && expected == got {
            break (expected, got);
        }
        if tokio::time::Instant::now() > deadline {
            break (expected, got);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    child.kill().await.expect("stop the subscriber");
    assert_eq!(
        got,
        expected,
        "subscriber counts vs Postgres; {}",
        read(&log)
    );
    assert_eq!(expected.len(), 3, "{expected:?}");
    assert_eq!(
        backlog(&stack).await,
        Some((0, 0)),
        "the durable consumer delivered everything and has every ack"
    );
    // The crash after the commit was survived by skipping the redelivered batch, not by luck.
    let stats = subscriber.counts().await["stats"].clone();
    assert!(
        stats["stale_skipped"].as_i64().unwrap_or(0) >= 4,
        "redeliveries were skipped: {stats}"
    );
}
