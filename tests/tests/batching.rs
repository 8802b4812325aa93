//! The batched write path keeps every guarantee: a refused command inside a batch of committed
//! ones, a batch that fails as a whole (settled one command at a time), a worker killed in
//! the middle of a backlog, and a send racing a removal it did not see. Each builds a backlog
//! while no worker runs, so the worker that starts takes it in multi-command batches (checked
//! from its own metrics).

use std::time::Duration;

use allo_common::auth::Caller;
use allo_common::ids::{CommandId, UserId};
use allo_common::ops::Operation;
use allo_e2e::{Stack, StackOptions, id};
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use serde_json::json;

/// A stack with no worker running yet and a conversation of alice and bob created by a worker
/// that has since stopped.
async fn backlogged_stack(extra: &[(&str, &str)]) -> (Stack, String) {
    let mut env = vec![(
        "ALLO_LIMITS__RATE_MAX_PER_WINDOW".to_string(),
        "100000".to_string(),
    )];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        env,
        ..Default::default()
    })
    .await;
    let first = stack.start_worker().await;
    let conversation = stack.create_conversation("alice", "group", &["bob"]).await;
    assert!(stack.terminate(&first).await, "worker stops cleanly");
    (stack, conversation)
}

/// A metric's value from a worker's `/metrics` (0 when absent).
async fn metric(stack: &Stack, worker: &str, name: &str) -> f64 {
    let text = stack.metrics_of(worker).await.expect("worker metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The conversation's message texts in seq order, and its event seqs.
async fn log_of(stack: &Stack) -> (Vec<String>, Vec<i64>) {
    let texts: Vec<(String,)> =
        sqlx::query_as("SELECT coalesce(body, '') FROM messages ORDER BY seq")
            .fetch_all(&stack.db)
            .await
            .expect("messages");
    let seqs: Vec<(i64,)> = sqlx::query_as("SELECT seq FROM events ORDER BY seq")
        .fetch_all(&stack.db)
        .await
        .expect("events");
    (
        texts.into_iter().map(|(t,)| t).collect(),
        seqs.into_iter().map(|(s,)| s).collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_send_inside_a_batch_leaves_the_others_committed_in_order() {
    let (mut stack, conversation) = backlogged_stack(&[]).await;
    let mut sent = Vec::new();
    let mut refused = String::new();
    for i in 0..30 {
        let (user, text) = match i {
            15 => ("mallory", "not a member".to_string()),
            _ => (if i % 2 == 0 { "alice" } else { "bob" }, format!("m{i}")),
        };
        let reply = stack
            .post(
                &stack.token(user),
                "sendMessage",
                json!({"conversationID": conversation, "message": text}),
            )
            .await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
        if user == "mallory" {
            refused = id(&reply.body, "commandId");
        } else {
            sent.push(text);
        }
    }
    let worker = stack.start_worker().await;
    let outcome = stack.outcome(&stack.token("mallory"), &refused).await;
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    assert_eq!(outcome["code"], "not_participant", "{outcome}");
    stack
        .wait_count(
            "SELECT count(*) FROM commands WHERE operation = 'sendMessage'",
            30,
            Duration::from_secs(30),
        )
        .await;

    let (texts, seqs) = log_of(&stack).await;
    assert_eq!(
        texts, sent,
        "every accepted send once, in the order it was posted"
    );
    assert_eq!(seqs, (1..=30).collect::<Vec<i64>>(), "gap-free seqs");
    assert!(
        !texts.iter().any(|t| t == "not a member"),
        "the refused send left nothing"
    );
    let differing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e JOIN messages m ON m.seq = e.seq
         WHERE e.type = 'message' AND e.data <> message_json(m, NULL)",
    )
    .fetch_one(&stack.db)
    .await
    .expect("compare");
    assert_eq!(
        differing, 0,
        "each message event shows the message as reads do"
    );
    let count = metric(&stack, &worker, "allo_batch_size_count").await;
    let sum = metric(&stack, &worker, "allo_batch_size_sum").await;
    assert!(
        sum > count,
        "the backlog was applied in multi-command batches ({sum} commands in {count} batches)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_that_fails_as_a_whole_is_settled_one_command_at_a_time() {
    let (mut stack, conversation) = backlogged_stack(&[]).await;
    // The same command twice in one batch (as a redelivery racing its original would be): the
    // set-based write hits the message's primary key, so the batch falls back.
    let caller = Caller {
        user: UserId::parse("alice").expect("user"),
        roles: Vec::new(),
        expires_at: i64::MAX,
    };
    let command_id = CommandId::generate();
    let envelope = allo_common::ingress::envelope(
        &caller,
        Operation::parse("sendMessage").expect("op"),
        json!({"conversationID": conversation, "message": "twice"}),
        command_id,
        &stack.settings.limits,
    )
    .expect("valid command");
    let subjects = allo_common::subjects::Subjects::of(&stack.settings);
    let js = async_nats::jetstream::new(stack.nats.clone());
    for copy in 0..2 {
        let message = PublishMessage::build()
            .message_id(format!("{command_id}-{copy}"))
            .payload(serde_json::to_vec(&envelope).expect("json").into());
        js.send_publish(subjects.command(&envelope), message)
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let others = futures::stream::iter(0..10)
        .then(|i| {
            let stack = &stack;
            let conversation = conversation.clone();
            async move {
                let reply = stack
                    .post(
                        &stack.token("bob"),
                        "sendMessage",
                        json!({"conversationID": conversation, "message": format!("b{i}")}),
                    )
                    .await;
                assert_eq!(reply.status, 202, "{:?}", reply.body);
                id(&reply.body, "commandId")
            }
        })
        .collect::<Vec<_>>()
        .await;
    let worker = stack.start_worker().await;
    for other in &others {
        let outcome = stack.outcome(&stack.token("bob"), other).await;
        assert_eq!(outcome["status"], "committed", "{outcome}");
    }
    let outcome = stack
        .outcome(&stack.token("alice"), &command_id.to_string())
        .await;
    assert_eq!(outcome["status"], "committed", "{outcome}");
    let (texts, seqs) = log_of(&stack).await;
    assert_eq!(
        texts.iter().filter(|t| *t == "twice").count(),
        1,
        "applied once: {texts:?}"
    );
    assert_eq!(texts.len(), 11);
    assert_eq!(seqs, (1..=12).collect::<Vec<i64>>(), "gap-free seqs");
    assert!(
        metric(&stack, &worker, "allo_batch_fallbacks_total").await >= 1.0,
        "the batch fell back to one command at a time"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_in_the_middle_of_a_backlog_loses_nothing_and_applies_nothing_twice() {
    let (mut stack, conversation) = backlogged_stack(&[("ALLO_WORKER__BATCH_SIZE", "4")]).await;
    let total = 800;
    futures::stream::iter(0..total)
        .map(|i| {
            let stack = &stack;
            let conversation = conversation.clone();
            async move {
                let user = if i % 2 == 0 { "alice" } else { "bob" };
                let reply = stack
                    .post(
                        &stack.token(user),
                        "sendMessage",
                        json!({"conversationID": conversation, "message": format!("k{i}")}),
                    )
                    .await;
                assert_eq!(reply.status, 202, "{:?}", reply.body);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let doomed = stack.start_worker().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stack.count("SELECT count(*) FROM messages").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stack.kill(&doomed).await;
    let at_kill = stack.count("SELECT count(*) FROM messages").await;
    assert!(
        at_kill < total,
        "the kill must land mid-backlog ({at_kill} of {total} applied)"
    );
    stack.start_worker().await;
    stack
        .wait_count(
            "SELECT count(*) FROM commands WHERE operation = 'sendMessage' AND status = 'committed'",
            total,
            Duration::from_secs(90),
        )
        .await;
    let (texts, seqs) = log_of(&stack).await;
    let distinct: std::collections::BTreeSet<&String> = texts.iter().collect();
    assert_eq!(texts.len() as i64, total, "every command applied");
    assert_eq!(distinct.len(), texts.len(), "none applied twice");
    assert_eq!(seqs, (1..=total + 1).collect::<Vec<i64>>(), "gap-free seqs");
}

/// A send whose statement waited for the conversation's lock while a removal committed is
/// refused, not ordered after the removal: the statement read membership from its snapshot, so
/// it aborts once it holds the lock, and the try on a new snapshot sees the removal. The
/// removal here is made by hand, as a second process serving the partition would make it.
#[tokio::test(flavor = "multi_thread")]
async fn a_send_that_waited_for_a_removals_lock_is_refused() {
    let (mut stack, conversation) = backlogged_stack(&[]).await;
    let reply = stack
        .post(
            &stack.token("bob"),
            "sendMessage",
            json!({"conversationID": conversation, "message": "after my removal"}),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let command = id(&reply.body, "commandId");

    let mut removal = stack.db.begin().await.expect("begin");
    sqlx::query("UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1::uuid")
        .bind(&conversation)
        .execute(&mut *removal)
        .await
        .expect("take a seq");
    sqlx::query(
        "UPDATE participants SET left_at = now(), removed_by = 'alice'
         WHERE conversation_id = $1::uuid AND user_id = 'bob'",
    )
    .bind(&conversation)
    .execute(&mut *removal)
    .await
    .expect("remove bob");
    let worker = stack.start_worker().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stack
        .count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND wait_event_type = 'Lock' AND query LIKE '%unnest($3::uuid[]%'",
        )
        .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the send never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    removal.commit().await.expect("commit the removal");

    let outcome = stack.outcome(&stack.token("bob"), &command).await;
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    assert_eq!(outcome["code"], "not_participant", "{outcome}");
    assert_eq!(stack.count("SELECT count(*) FROM messages").await, 0);
    assert!(
        metric(&stack, &worker, "allo_batch_aborts_total").await >= 1.0,
        "the statement aborted once it held the lock"
    );
}

/// Overload is refused, not queued for ever: past the command backlog bound, ingress answers
/// 503 with `Retry-After`, stores nothing, and accepts again once the workers drain it.
#[tokio::test(flavor = "multi_thread")]
async fn past_the_backlog_bound_ingress_answers_503_and_stores_nothing() {
    let (mut stack, conversation) =
        backlogged_stack(&[("ALLO_JETSTREAM__COMMAND_MAX_MESSAGES", "5")]).await;
    let send = |text: &str| json!({"conversationID": conversation, "message": text});
    for i in 0..5 {
        let reply = stack
            .post(&stack.token("alice"), "sendMessage", send(&format!("q{i}")))
            .await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
    }
    let refused = allo_e2e::assert_problem(
        stack
            .post(&stack.token("alice"), "sendMessage", send("one too many"))
            .await,
        503,
    );
    assert_eq!(refused.body["code"], "unavailable", "{:?}", refused.body);
    assert_eq!(refused.body["detail"], allo_common::ingress::UNAVAILABLE);
    assert!(
        refused.headers.get("retry-after").is_some(),
        "503 without Retry-After"
    );
    assert_eq!(
        stack.pending_commands().await,
        5,
        "the refused one was kept"
    );
    stack.start_worker().await;
    stack
        .wait_count("SELECT count(*) FROM messages", 5, Duration::from_secs(30))
        .await;
    stack.wait_pending(0, Duration::from_secs(10)).await;
    let again = stack
        .post(
            &stack.token("alice"),
            "sendMessage",
            send("after the drain"),
        )
        .await;
    assert_eq!(again.status, 202, "{:?}", again.body);
    stack
        .wait_count("SELECT count(*) FROM messages", 6, Duration::from_secs(30))
        .await;
    assert_eq!(
        stack
            .count("SELECT count(*) FROM messages WHERE body = 'one too many'")
            .await,
        0
    );
}
