//! What operators handle (issue 14): dead letters listed, shown (with the real last error),
//! replayed once under a new linked id after a fix, and discarded, with the real
//! `allo-workers dead-letters` commands.

use std::time::Duration;

use allo_e2e::{Stack, StackOptions, id};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

async fn tool(stack: &Stack, args: &[&str]) -> Value {
    let (ok, out, err) = stack.run_tool("allo-workers", args).await;
    assert!(ok, "allo-workers {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

fn time(v: &Value, field: &str) -> DateTime<Utc> {
    v[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{field} is no time: {v}"))
}

/// The error Postgres raised, as sqlx shows it (`… at line N` is Postgres' source line).
fn assert_real_error(error: &str, raised: &str) {
    assert!(
        error.starts_with(&format!("error returned from database: {raised}"))
            && error.ends_with("(SQLSTATE P0001)"),
        "{error}"
    );
}

/// Replays `old` with the CLI, checks the status reads of both ids link them, and replays it
/// again: the same new id, nothing applied twice. Returns the new id.
async fn replay_and_check_links(stack: &Stack, token: &str, old: &str) -> String {
    let replayed = tool(stack, &["dead-letters", "replay", old]).await;
    assert_eq!(replayed["status"], "replayed", "{replayed}");
    let new = id(&replayed, "replayedAs");
    assert_ne!(new, old, "a replay takes a new command id");
    let outcome = stack.outcome(token, &new).await;
    assert_eq!(outcome["status"], "committed", "{outcome}");
    assert_eq!(outcome["replayOf"], old, "{outcome}");
    let before = stack.outcome(token, old).await;
    assert_eq!(before["status"], "rejected", "{before}");
    assert_eq!(before["code"], "dead_lettered", "{before}");
    assert_eq!(before["replayedAs"], new.as_str(), "{before}");
    // Twice is once: the second replay names the same new id and publishes nothing.
    let published = stack.commands_published().await;
    let again = tool(stack, &["dead-letters", "replay", old]).await;
    assert_eq!(again["status"], "alreadyReplayed", "{again}");
    assert_eq!(again["replayedAs"], new.as_str(), "{again}");
    assert_eq!(
        stack.commands_published().await,
        published,
        "replayed twice"
    );
    new
}

/// A poison command (Postgres refuses its row) is dead-lettered with the error that made it
/// fail; the operator reads it, fixes the cause, replays it once: it is applied exactly once
/// under a new command id linked to the old one, in order with the rest. Another one is
/// discarded and stays rejected for its sender.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_replayed_once_after_a_fix_or_discarded() {
    let started = Utc::now();
    let stack = Stack::start(StackOptions {
        fanout: false,
        env: vec![("ALLO_JETSTREAM__MAX_DELIVER".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    sqlx::raw_sql(
        "CREATE FUNCTION doom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.body LIKE 'doomed%' THEN RAISE EXCEPTION 'doomed by the test'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER doom BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION doom();",
    )
    .execute(&stack.db)
    .await
    .expect("trigger");
    let alice = stack.token("alice");
    let send = |text: &str| json!({"conversationID": conv, "message": text});
    let mut poison = Vec::new();
    for text in ["doomed one", "doomed two", "doomed three"] {
        let sent = stack.post(&alice, "sendMessage", send(text)).await;
        assert_eq!(sent.status, 202, "{:?}", sent.body);
        let command = id(&sent.body, "commandId");
        let outcome = stack.outcome(&alice, &command).await;
        assert_eq!(outcome["code"], "dead_lettered", "{outcome}");
        poison.push(command);
    }

    let listed = tool(&stack, &["dead-letters", "list"]).await;
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 3, "{listed:?}");
    for letter in listed {
        assert_eq!(letter["operation"], "sendMessage");
        // Two deliveries ran it; the third set it aside without running it.
        assert_eq!(letter["deliveries"], 3);
        // The real reason, as the worker met it, and no body.
        assert_real_error(
            letter["error"].as_str().unwrap_or_default(),
            "doomed by the test",
        );
        // First failure, then a nak delay (2 s, then 4 s), then the dead letter.
        let (first, at) = (time(letter, "firstFailedAt"), time(letter, "at"));
        assert!(
            started <= first && first + chrono::Duration::seconds(2) <= at && at <= Utc::now(),
            "started {started}, first failed {first}, dead-lettered {at}"
        );
        assert!(letter.get("command").is_none(), "list carries no bodies");
    }
    // The failures were handed over to the dead letters.
    assert_eq!(
        stack.count("SELECT count(*) FROM command_failures").await,
        0
    );
    let shown = tool(&stack, &["dead-letters", "show", &poison[0]]).await;
    assert_eq!(
        shown["command"]["command"]["body"]["content"]["message"], "doomed one",
        "{shown}"
    );
    assert_eq!(shown["error"], listed[2]["error"], "{shown}");
    assert_eq!(
        shown["firstFailedAt"], listed[2]["firstFailedAt"],
        "{shown}"
    );

    // The fix, then the replay: applied once, after what was sent before it.
    sqlx::raw_sql("DROP TRIGGER doom ON messages")
        .execute(&stack.db)
        .await
        .expect("fix");
    replay_and_check_links(&stack, &alice, &poison[0]).await;
    stack
        .act("alice", "sendMessage", send("after the fix"))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM messages WHERE conversation_id = $1::uuid ORDER BY seq",
    )
    .bind(&conv)
    .fetch_all(&stack.db)
    .await
    .expect("messages");
    assert_eq!(bodies, ["doomed one", "after the fix"]);

    // The same over HTTP on the API's admin listener, with an operator's token (role admin):
    // dead letters hold users' commands. The client port does not serve them at all.
    let admin = stack.token_with_roles("ops", &["admin"]);
    let path = format!("/admin/dead-letters/{}", poison[2]);
    assert_eq!(
        stack.get(Some(&admin), "/admin/dead-letters").await.status,
        404
    );
    assert_eq!(stack.get(Some(&admin), &path).await.status, 404);
    for token in [
        stack.token("bob"),
        stack.token_with_roles("mia", &["moderator"]),
    ] {
        let refused = stack.admin_get_as(&token, "/admin/dead-letters").await;
        allo_e2e::assert_problem(refused, 403);
        let refused = stack.admin_get_as(&token, &path).await;
        allo_e2e::assert_problem(refused, 403);
    }
    let listed = stack.admin_get_as(&admin, "/admin/dead-letters").await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert_eq!(
        listed.body.as_array().map(Vec::len),
        Some(2),
        "{:?}",
        listed.body
    );
    let shown = stack.admin_get_as(&admin, &path).await;
    assert_eq!(
        shown.body["command"]["command"]["body"]["content"]["message"],
        "doomed three"
    );
    let post = |path: String| {
        let request = stack
            .http
            .post(format!("{}{path}", stack.api_admin_url))
            .bearer_auth(&admin);
        async move { request.send().await.expect("POST") }
    };
    let replayed = post(format!("{path}/replay")).await;
    assert_eq!(replayed.status(), 200);
    let replayed: Value = replayed.json().await.expect("JSON");
    let new = id(&replayed, "replayedAs");
    let outcome = stack.outcome(&alice, &new).await;
    assert_eq!(outcome["status"], "committed", "{outcome}");
    assert_eq!(outcome["replayOf"], poison[2].as_str(), "{outcome}");
    let again = post(format!("{path}/replay")).await;
    assert_eq!(again.status(), 200, "replayed twice");
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(again["status"], "alreadyReplayed", "{again}");
    assert_eq!(again["replayedAs"], new.as_str(), "{again}");
    assert_eq!(
        stack
            .count("SELECT count(*) FROM messages WHERE body = 'doomed three'")
            .await,
        1
    );

    // Discarded: gone from the list, still rejected for its sender, never applied.
    let discarded = tool(&stack, &["dead-letters", "discard", &poison[1]]).await;
    assert_eq!(discarded["status"], "discarded");
    assert_eq!(tool(&stack, &["dead-letters", "list"]).await, json!([]));
    let outcome = stack.outcome(&alice, &poison[1]).await;
    assert_eq!(outcome["code"], "dead_lettered", "{outcome}");
    assert!(outcome.get("replayedAs").is_none(), "{outcome}");
    let (ok, _, err) = stack
        .run_tool("allo-workers", &["dead-letters", "replay", &poison[1]])
        .await;
    assert!(!ok && err.contains("no dead letter"), "{err}");
}

/// A command that fails once and then commits: its error is kept while it waits for the
/// redelivery, and gone once it is applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_failure_is_kept_until_the_command_commits() {
    let stack = Stack::start(StackOptions {
        fanout: false,
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    // A sequence is not rolled back with the failed transaction: only the first try fails.
    sqlx::raw_sql(
        "CREATE SEQUENCE flaky_tries;
         CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.body LIKE 'flaky%' AND nextval('flaky_tries') = 1 THEN
             RAISE EXCEPTION 'flaky by the test'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER flaky BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION flaky();",
    )
    .execute(&stack.db)
    .await
    .expect("trigger");
    let alice = stack.token("alice");
    let sent = stack
        .post(
            &alice,
            "sendMessage",
            json!({"conversationID": conv, "message": "flaky secret"}),
        )
        .await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    let command = id(&sent.body, "commandId");
    // Waiting out the nak delay (2 s): the failure is on record.
    stack
        .wait_count(
            "SELECT count(*) FROM command_failures",
            1,
            Duration::from_secs(10),
        )
        .await;
    let (error, deliveries): (String, i64) = sqlx::query_as(
        "SELECT error, deliveries FROM command_failures WHERE command_id = $1::uuid",
    )
    .bind(&command)
    .fetch_one(&stack.db)
    .await
    .expect("the failure is recorded under the command's id");
    assert_real_error(&error, "flaky by the test");
    assert_eq!(deliveries, 1);
    let outcome = stack.outcome(&alice, &command).await;
    assert_eq!(outcome["status"], "committed", "{outcome}");
    assert!(outcome.get("replayOf").is_none(), "{outcome}");
    // Cleared right after the commit, before the ack: moments after the status reads it.
    let mut left = 1;
    for _ in 0..50 {
        left = stack.count("SELECT count(*) FROM command_failures").await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the failure outlived the commit");
}

/// Every worker process exports each pool's backlog, read from the pool's consumer: a worker
/// serving only the scheduler reports the messages pool's waiting commands and their age, and
/// sees them drain once a messages worker starts.
#[tokio::test(flavor = "multi_thread")]
async fn every_worker_exports_each_pools_backlog() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        env: vec![("ALLO_WORKER__BACKLOG_INTERVAL_MS".into(), "200".into())],
        ..Default::default()
    })
    .await;
    let alice = stack.token("alice");
    for i in 0..5 {
        let body = json!({"participants": ["bob"], "type": "group", "topic": format!("t{i}")});
        let reply = stack.post(&alice, "createConversation", body).await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
    }
    let posted = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watcher = stack.start_worker_with(&["--pool", "scheduler"]).await;
    let gauge = |text: &str, name: &str| allo_e2e::metric_sum(text, name, &["pool=\"messages\""]);
    let mut seen = (0.0, 0.0);
    for _ in 0..100 {
        let text = stack.metrics_of(&watcher).await.unwrap_or_default();
        seen = (
            gauge(&text, "allo_pool_commands_waiting"),
            gauge(&text, "allo_pool_oldest_waiting_seconds"),
        );
        if seen.0 == 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.0, 5.0, "waiting commands of the messages pool");
    let age = posted.elapsed().as_secs_f64();
    assert!(
        seen.1 >= 1.5 && seen.1 <= age + 1.0,
        "oldest waiting {} s, posted {age} s ago",
        seen.1
    );
    stack.start_worker_with(&["--pool", "messages"]).await;
    let mut drained = false;
    for _ in 0..150 {
        let text = stack.metrics_of(&watcher).await.unwrap_or_default();
        if gauge(&text, "allo_pool_commands_waiting") == 0.0
            && gauge(&text, "allo_pool_commands_in_flight") == 0.0
            && gauge(&text, "allo_pool_oldest_waiting_seconds") == 0.0
            && text.contains("allo_pool_commands_waiting{pool=\"messages\"}")
        {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "the backlog gauges never showed the drain");
    assert_eq!(stack.count("SELECT count(*) FROM conversations").await, 5);
}
