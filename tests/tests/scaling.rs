//! A pool's processes split its partitions (issue 14): each partition, so each conversation,
//! is served by one process at a time; when a process stops (SIGTERM) or dies (SIGKILL) the
//! others take its partitions over, and every command is still applied once, gap-free, and
//! (for a hand-over) in the order its sender sent it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use allo_common::partition::RouteHash;
use allo_e2e::{Stack, StackOptions};
use serde_json::json;

const CONVERSATIONS: usize = 8;
const PER_CONVERSATION: usize = 24;

async fn stack() -> Stack {
    Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        ack_wait_secs: 3,
        env: vec![
            ("ALLO_WORKER__HEARTBEAT_MS".into(), "250".into()),
            ("ALLO_LIMITS__RATE_MAX_PER_WINDOW".into(), "100000".into()),
        ],
        ..Default::default()
    })
    .await
}

/// Waits until the named workers serve disjoint sets of the messages pool's partitions that
/// together cover all of them; returns each one's set.
async fn wait_split(stack: &Stack, workers: &[&str]) -> Vec<Vec<u16>> {
    let partitions = stack.settings.jetstream.partitions;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut sets = Vec::new();
        for w in workers {
            sets.push(stack.partitions_served(w, "messages").await);
        }
        let all: Vec<u16> = sets.iter().flatten().copied().collect();
        let distinct: BTreeSet<u16> = all.iter().copied().collect();
        if all.len() == usize::from(partitions) && distinct.len() == all.len() {
            return sets;
        }
        assert!(
            Instant::now() < deadline,
            "{workers:?} never split the partitions: {sets:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each conversation's sender posts its messages one after another (each accepted before the
/// next); the conversations send at once. Calls `midway` once half of the messages are in.
async fn send_all<F, Fut>(stack: &Stack, conversations: &[String], midway: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let send = |half: usize| {
        futures::future::join_all(conversations.iter().enumerate().map(|(c, conv)| {
            let token = stack.token(&format!("sender{c}"));
            async move {
                let range = if half == 0 {
                    0..PER_CONVERSATION / 2
                } else {
                    PER_CONVERSATION / 2..PER_CONVERSATION
                };
                for i in range {
                    let reply = stack
                        .post(
                            &token,
                            "sendMessage",
                            json!({"conversationID": conv, "message": format!("c{c}-{i:02}")}),
                        )
                        .await;
                    assert_eq!(reply.status, 202, "{:?}", reply.body);
                }
            }
        }))
    };
    send(0).await;
    midway().await;
    send(1).await;
}

/// Every conversation's messages, in seq order, and whether its seqs are 2..=n+1 (1 is the
/// conversation's creation).
async fn texts_by_conversation(
    stack: &Stack,
    conversations: &[String],
) -> Vec<(Vec<String>, bool)> {
    let mut out = Vec::new();
    for conv in conversations {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, coalesce(body, '') FROM messages WHERE conversation_id = $1::uuid ORDER BY seq",
        )
        .bind(conv)
        .fetch_all(&stack.db)
        .await
        .expect("messages");
        let gap_free = rows
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == i as i64 + 2);
        out.push((rows.into_iter().map(|(_, t)| t).collect(), gap_free));
    }
    out
}

/// Waits until every message is in Postgres; then, per conversation, what it holds in seq
/// order, whether its seqs are gap-free, and what its sender sent (in order).
async fn settled(stack: &Stack, conversations: &[String]) -> Vec<(Vec<String>, bool, Vec<String>)> {
    stack
        .wait_count(
            "SELECT count(*) FROM messages",
            (CONVERSATIONS * PER_CONVERSATION) as i64,
            Duration::from_secs(30),
        )
        .await;
    texts_by_conversation(stack, conversations)
        .await
        .into_iter()
        .enumerate()
        .map(|(c, (texts, gap_free))| {
            let sent = (0..PER_CONVERSATION)
                .map(|i| format!("c{c}-{i:02}"))
                .collect();
            (texts, gap_free, sent)
        })
        .collect()
}

async fn conversations(stack: &Stack) -> Vec<String> {
    let mut out = Vec::new();
    for c in 0..CONVERSATIONS {
        out.push(
            stack
                .create_conversation(&format!("sender{c}"), "group", &["reader"])
                .await,
        );
    }
    out
}

/// Two processes split the partitions; one is told to stop in the middle of the load while it
/// holds commands (a conversation of its is locked, so its lane queues). The other takes every
/// partition over, and each conversation holds its messages exactly once, gap-free and in the
/// order sent: the taker pulls only once the handed-back commands are deliverable again. Prints the hand-over time (from SIGTERM to the survivor
/// serving every partition).
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_process_hands_its_partitions_over_in_order() {
    let mut stack = stack().await;
    let first = stack.start_worker().await;
    let conversations = conversations(&stack).await;
    let second = stack.start_worker_with(&["--pool", "messages"]).await;
    let split = wait_split(&stack, &[&first, &second]).await;
    assert!(
        split.iter().all(|s| !s.is_empty()),
        "one process serves nothing: {split:?}"
    );

    // The stopping process must hold commands when it stops, or the hand-over has nothing to
    // keep in order: a conversation it serves is locked in Postgres, so its lane blocks and
    // the conversation's next messages (and those of its lane's other conversations) queue.
    let partitions = stack.settings.jetstream.partitions;
    let held = conversations
        .iter()
        .find(|c| {
            let id = uuid::Uuid::parse_str(c).expect("conversation id");
            split[0].contains(&RouteHash::of(&id).partition(partitions).0)
        })
        .expect("a conversation the stopping process serves")
        .clone();
    let mut blocker = stack.db.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM conversations WHERE id = $1::uuid FOR UPDATE")
        .bind(&held)
        .execute(&mut *blocker)
        .await
        .expect("lock");

    let handed_over = std::sync::Mutex::new(None);
    send_all(&stack, &conversations, || async {
        let at = Instant::now();
        stack.signal(&first, "TERM");
        tokio::time::sleep(Duration::from_millis(300)).await;
        blocker.rollback().await.expect("unlock");
        let all: Vec<u16> = (0..partitions).collect();
        while stack.partitions_served(&second, "messages").await != all {
            assert!(at.elapsed() < Duration::from_secs(20), "no hand-over");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        *handed_over.lock().unwrap() = Some(at.elapsed());
    })
    .await;
    eprintln!(
        "hand-over: the survivor served every partition {:?} after SIGTERM",
        handed_over.lock().unwrap().expect("hand-over time")
    );
    assert!(
        stack.wait_exit(&first, Duration::from_secs(20)).await,
        "the stopping worker did not exit cleanly"
    );
    for (c, (texts, gap_free, sent)) in settled(&stack, &conversations)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            texts, sent,
            "conversation {c}: not once each, in the order sent"
        );
        assert!(gap_free, "conversation {c}: its seqs have a gap");
    }
    // The survivor applied the second half (the stopped process no longer answers).
    assert!(stack.committed_by(&second, "sendMessage").await > 0);
    stack.wait_pending(0, Duration::from_secs(10)).await;
}

/// A process killed outright stops sending heartbeats: after three missed ones the other takes
/// its partitions, and what the dead one held comes back after `ack_wait`. Every message is
/// applied exactly once, gap-free.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_processs_partitions_are_taken_over() {
    let mut stack = stack().await;
    let first = stack.start_worker().await;
    let conversations = conversations(&stack).await;
    let second = stack.start_worker_with(&["--pool", "messages"]).await;
    wait_split(&stack, &[&first, &second]).await;

    send_all(&stack, &conversations, || async {
        stack.signal(&first, "KILL");
    })
    .await;
    let all: Vec<u16> = (0..stack.settings.jetstream.partitions).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.partitions_served(&second, "messages").await != all {
        assert!(Instant::now() < deadline, "the survivor never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (c, (texts, gap_free, sent)) in settled(&stack, &conversations)
        .await
        .into_iter()
        .enumerate()
    {
        let got: BTreeSet<&String> = texts.iter().collect();
        assert_eq!(texts.len(), PER_CONVERSATION, "conversation {c}: {texts:?}");
        assert_eq!(
            got,
            sent.iter().collect(),
            "conversation {c}: lost or applied twice"
        );
        assert!(gap_free, "conversation {c}: its seqs have a gap");
    }
    stack.wait_pending(0, Duration::from_secs(10)).await;
}
