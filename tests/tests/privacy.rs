//! Privacy (issue 10), one test per promise, each read through every path a client or a backend
//! subscriber has (`Stack::assert_nowhere`: HTTP reads, the event log, socket replay and live
//! sockets, the NATS event stream read directly, the database rows):
//! - a poll vote names no voter;
//! - the hide by reports names no reporter, and moderation outcomes shown to the room name no
//!   moderator;
//! - a hidden message is redacted everywhere it is served until a moderator restores it;
//! - deleting or unsending erases every copy of a message's content (text, edits, restored
//!   copies, poll question and options, scheduled body, command results, dead letters, report
//!   snapshots, the event stream);
//! - a member added later reads nothing from before they joined unless the conversation's
//!   history is `shared`.

use std::time::Duration;

use allo_e2e::{Look, Stack, StackOptions, id};
use serde_json::{Value, json};

const MODERATOR: &[&str] = &["moderator"];

/// Runs a command as `user`, waits for it to commit; returns (result, commandId).
async fn run(stack: &Stack, user: &str, op: &str, body: Value) -> (Value, String) {
    run_with(stack, &stack.token(user), op, body).await
}

async fn run_with(stack: &Stack, token: &str, op: &str, body: Value) -> (Value, String) {
    let reply = stack.post_wait(token, op, body.clone()).await;
    assert!(
        matches!(reply.status, 200 | 201),
        "{op} {body}: {} {:?}",
        reply.status,
        reply.body
    );
    (reply.body["result"].clone(), id(&reply.body, "commandId"))
}

async fn send(stack: &Stack, user: &str, conv: &str, text: &str) -> String {
    send_command(stack, user, conv, text).await.0
}

/// Sends a message; returns (messageId, commandId).
async fn send_command(stack: &Stack, user: &str, conv: &str, text: &str) -> (String, String) {
    let (result, command) = run(
        stack,
        user,
        "sendMessage",
        json!({"conversationID": conv, "message": text}),
    )
    .await;
    (id(&result, "messageId"), command)
}

/// A command's result as its sender reads it back (`GET /api/commands/{id}`).
async fn read_back(stack: &Stack, user: &str, command: &str) -> Value {
    let reply = stack
        .get(
            Some(&stack.token(user)),
            &format!("/api/commands/{command}"),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["result"].clone()
}

/// The event log as `user` sees it.
async fn event_log(stack: &Stack, user: &str, conv: &str) -> Vec<Value> {
    let log = stack
        .get(
            Some(&stack.token(user)),
            &format!("/api/conversations/{conv}/events?limit=100"),
        )
        .await;
    log.body["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poll_vote_names_no_voter_anywhere() {
    let stack = Stack::start(StackOptions::default()).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "voter-zed"])
        .await;
    let mut alice = stack.socket("alice").await;
    alice.join(&conv).await;
    let (poll, _) = run(
        &stack,
        "alice",
        "createPoll",
        json!({"conversationID": conv, "question": "lunch?", "options": ["pizza", "soup"]}),
    )
    .await;
    let poll = id(&poll, "messageId");
    let vote = |i: u32| json!({"conversationID": conv, "messageId": poll, "optionIndex": i});
    let (mine, zed_command) = run(&stack, "voter-zed", "votePoll", vote(1)).await;
    // The voter reads their own vote back; nobody else does.
    assert_eq!(
        (mine["optionIndex"].as_u64(), mine["action"].as_str()),
        (Some(1), Some("voted"))
    );
    let (_, bob_command) = run(&stack, "bob", "votePoll", vote(0)).await;
    let live = alice.collect("pollVoted", 2, Duration::from_secs(10)).await;
    assert_eq!(live[1]["votes"], json!([1, 1]), "tallies only: {live:?}");
    let live = [&alice];
    let look = Look {
        event_types: &["pollVoted"],
        ..Look::everywhere(&conv, &["alice", "bob"], &live)
    };
    for secret in ["voter-zed", &zed_command, &bob_command] {
        stack.assert_nowhere(secret, &look).await;
    }
    let logged: Vec<Value> = event_log(&stack, "bob", &conv)
        .await
        .into_iter()
        .filter(|e| e["type"] == "pollVoted")
        .collect();
    assert_eq!(logged.len(), 2);
    for event in &logged {
        assert_eq!(
            (&event["actor"], &event["commandId"]),
            (&Value::Null, &Value::Null),
            "{event}"
        );
        let mut keys: Vec<_> = event["data"].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["messageId", "votes"], "{event}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hiding_and_moderation_name_no_reporter_and_no_moderator() {
    let stack = Stack::start(StackOptions::default()).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol", "rep-dave"])
        .await;
    let mut alice = stack.socket("alice").await;
    alice.join(&conv).await;
    let report = |m: &str| json!({"conversationID": conv, "messageId": m, "reason": "spam"});
    let m1 = send(&stack, "alice", &conv, "first").await;
    run(&stack, "bob", "reportMessage", report(&m1)).await;
    run(&stack, "carol", "reportMessage", report(&m1)).await;
    // The third distinct reporter crosses the threshold: their report hides the message.
    let (_, dave_command) = run(&stack, "rep-dave", "reportMessage", report(&m1)).await;
    let hidden = alice.event_about("messageDeleted", &m1).await;
    assert_eq!(hidden["reason"], "hidden");

    let mia = stack.token_with_roles("mod-mia", MODERATOR);
    let (_, restore_command) = run_with(
        &stack,
        &mia,
        "restoreMessage",
        json!({"conversationID": conv, "messageId": m1}),
    )
    .await;
    alice.event_about("messageRestored", &m1).await;
    let m2 = send(&stack, "alice", &conv, "second").await;
    run(&stack, "bob", "reportMessage", report(&m2)).await;
    let queue = stack.get(Some(&mia), "/api/moderation/reports").await;
    let report_id = id(&queue.body[0], "reportId");
    let (_, remove_command) = run_with(
        &stack,
        &mia,
        "resolveReport",
        json!({"reportId": report_id, "action": "remove"}),
    )
    .await;
    let removed = alice.event_about("messageDeleted", &m2).await;
    assert_eq!(removed["reason"], "removed");
    let tombstone = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{conv}/messages/{m2}"),
        )
        .await;
    assert_eq!(
        (
            tombstone.body["deletedReason"].as_str(),
            &tombstone.body["deletedBy"]
        ),
        (Some("removed"), &Value::Null),
        "{:?}",
        tombstone.body
    );

    let live = [&alice];
    let look = Look {
        event_types: &["messageDeleted", "messageRestored"],
        ..Look::everywhere(&conv, &["alice", "bob"], &live)
    };
    for secret in [
        "rep-dave",
        &dave_command,
        "mod-mia",
        &restore_command,
        &remove_command,
    ] {
        stack.assert_nowhere(secret, &look).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hidden_message_is_redacted_everywhere_until_restored() {
    let stack = Stack::start(StackOptions::default()).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol", "dave"])
        .await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    let secret = "HIDDEN-watches-4711";
    let (m, sent) = send_command(&stack, "alice", &conv, secret).await;
    assert_eq!(read_back(&stack, "alice", &sent).await["message"], secret);
    bob.event_about("message", &m).await;
    for reporter in ["bob", "carol", "dave"] {
        run(
            &stack,
            reporter,
            "reportMessage",
            json!({"conversationID": conv, "messageId": m, "reason": "spam"}),
        )
        .await;
    }
    bob.event_about("messageDeleted", &m).await;
    // What bob's socket got live before the hide cannot be taken back; from here on nothing.
    bob.clear_seen();

    // The text stays only where a restore needs it: the message row and the log's own row
    // (served redacted), the open reports' snapshots (moderators), and the sender's command.
    let live = [&bob];
    let look = Look {
        allowed_tables: &["messages", "events", "reports", "commands"],
        ..Look::everywhere(&conv, &["alice", "bob", "carol"], &live)
    };
    stack.assert_nowhere(secret, &look).await;
    let redacted = event_log(&stack, "bob", &conv)
        .await
        .into_iter()
        .find(|e| e["type"] == "message" && e["data"]["messageId"] == m.as_str())
        .expect("the message event stays in the log");
    assert_eq!(
        (&redacted["data"]["message"], &redacted["data"]["hidden"]),
        (&Value::Null, &json!(true))
    );
    // The sender reading back the send: redacted too, while it is hidden.
    let result = read_back(&stack, "alice", &sent).await;
    assert_eq!(
        (&result["message"], &result["hidden"], &result["messageId"]),
        (&Value::Null, &json!(true), &json!(m)),
        "{result}"
    );

    run_with(
        &stack,
        &stack.token_with_roles("mia", MODERATOR),
        "restoreMessage",
        json!({"conversationID": conv, "messageId": m}),
    )
    .await;
    assert_eq!(
        bob.event_about("messageRestored", &m).await["message"],
        secret
    );
    let log = event_log(&stack, "bob", &conv).await;
    let original = log
        .iter()
        .find(|e| e["type"] == "message" && e["data"]["messageId"] == m.as_str())
        .expect("message event");
    assert_eq!(
        original["data"]["message"], secret,
        "restored: served again"
    );
    assert_eq!(read_back(&stack, "alice", &sent).await["message"], secret);
}

/// Deleting and unsending erase every copy: a text with an edit, one that was reported (the
/// report resolved) and one hidden and restored (`messageRestored` carried the text), a poll,
/// a message that was scheduled, an unsent one, an expired one, and a dead letter that
/// mentioned one.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_and_unsending_erase_every_copy() {
    let stack = Stack::start(StackOptions::default()).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol", "dave"])
        .await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    let mia = stack.token_with_roles("mia", MODERATOR);
    let on = |m: &str| json!({"conversationID": conv, "messageId": m});
    let report = |m: &str| json!({"conversationID": conv, "messageId": m, "reason": "spam"});

    let edited = send(&stack, "alice", &conv, "ERASE-text-1").await;
    run(
        &stack,
        "alice",
        "editMessage",
        json!({"conversationID": conv, "messageId": edited, "newMessage": "ERASE-edit-1"}),
    )
    .await;
    run(&stack, "bob", "reportMessage", report(&edited)).await;
    let queue = stack.get(Some(&mia), "/api/moderation/reports").await;
    let report_id = id(&queue.body[0], "reportId");
    run_with(
        &stack,
        &mia,
        "resolveReport",
        json!({"reportId": report_id, "action": "dismiss"}),
    )
    .await;
    // An edit of it that failed on every delivery (as the worker records one).
    sqlx::query(
        "INSERT INTO dead_letters (command_id, subject, payload, deliveries, error)
         VALUES ($1, 'cmd.messages.editMessage', convert_to($2, 'UTF8'), 5, 'test')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(json!({"command": {"messageId": edited, "newMessage": "ERASE-dead-1"}}).to_string())
    .execute(&stack.db)
    .await
    .unwrap();

    let restored = send(&stack, "alice", &conv, "ERASE-hidden-2").await;
    for reporter in ["bob", "carol", "dave"] {
        run(&stack, reporter, "reportMessage", report(&restored)).await;
    }
    run_with(&stack, &mia, "restoreMessage", on(&restored)).await;

    let (poll, _) = run(
        &stack,
        "alice",
        "createPoll",
        json!({"conversationID": conv, "question": "ERASE-poll-question", "options": ["ERASE-option-a", "ERASE-option-b"]}),
    )
    .await;
    let poll = id(&poll, "messageId");
    run(
        &stack,
        "bob",
        "votePoll",
        json!({"conversationID": conv, "messageId": poll, "optionIndex": 0}),
    )
    .await;

    let past = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    run(
        &stack,
        "alice",
        "scheduleMessage",
        json!({"conversationID": conv, "message": "ERASE-scheduled-4", "scheduledTime": past}),
    )
    .await;
    let scheduled = bob
        .next_matching(
            "message",
            |m| m["message"] == "ERASE-scheduled-4",
            Duration::from_secs(10),
        )
        .await
        .expect("the scheduled message is sent");
    let scheduled = id(&scheduled, "messageId");

    let (ephemeral, _) = run(
        &stack,
        "alice",
        "sendEphemeralMessage",
        json!({"conversationID": conv, "message": "ERASE-ephemeral-6", "expiresIn": 1000}),
    )
    .await;
    let ephemeral = id(&ephemeral, "messageId");
    let expired = bob
        .next_matching(
            "messageDeleted",
            |d| d["messageId"] == ephemeral.as_str(),
            Duration::from_secs(10),
        )
        .await
        .expect("the sweeper deletes it");
    assert_eq!(expired["reason"], "expired");

    let (unsent, unsent_command) = send_command(&stack, "alice", &conv, "ERASE-unsent-5").await;
    assert_eq!(
        read_back(&stack, "alice", &unsent_command).await["message"],
        "ERASE-unsent-5"
    );
    bob.event_about("message", &unsent).await;
    bob.clear_seen();

    for m in [&edited, &restored, &poll, &scheduled] {
        run(&stack, "alice", "deleteMessage", on(m)).await;
    }
    run(&stack, "alice", "unsendMessage", on(&unsent)).await;
    bob.event_about("messageUnsent", &unsent).await;

    let live = [&bob];
    let look = Look::everywhere(&conv, &["alice", "bob"], &live);
    for secret in [
        "ERASE-text-1",
        "ERASE-edit-1",
        "ERASE-dead-1",
        "ERASE-hidden-2",
        "ERASE-poll-question",
        "ERASE-option-a",
        "ERASE-scheduled-4",
        "ERASE-unsent-5",
        "ERASE-ephemeral-6",
    ] {
        stack.assert_nowhere(secret, &look).await;
    }
    // The send's result, read back by its sender, is the tombstone too.
    let result = read_back(&stack, "alice", &unsent_command).await;
    assert_eq!(
        (&result["message"], &result["messageId"]),
        (&Value::Null, &json!(unsent)),
        "{result}"
    );
    // The tombstones keep ids, times, who and why.
    let tomb = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{conv}/messages/{poll}"),
        )
        .await;
    assert_eq!(
        (
            tomb.body["status"].as_str(),
            tomb.body["deletedBy"].as_str(),
            &tomb.body["poll"]
        ),
        (Some("deleted"), Some("alice"), &Value::Null),
        "{:?}",
        tomb.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn late_joiners_read_history_only_as_the_conversation_allows() {
    let stack = Stack::start(StackOptions::default()).await;
    // A bad setting names its field, and nothing reaches the broker.
    let before = stack.commands_published().await;
    let bad = stack
        .post(
            &stack.token("alice"),
            "createConversation",
            json!({"participants": ["bob"], "type": "group", "historyVisibility": "everyone"}),
        )
        .await;
    let bad = allo_e2e::assert_problem(bad, 422);
    assert_eq!(bad.body["field"], "historyVisibility", "{:?}", bad.body);
    assert_eq!(stack.commands_published().await, before);

    // A group defaults to `joined`.
    let private = stack.create_conversation("alice", "group", &["bob"]).await;
    let shared = stack
        .post_wait(
            &stack.token("alice"),
            "createConversation",
            json!({"participants": ["bob"], "type": "group", "historyVisibility": "shared"}),
        )
        .await;
    assert_eq!(shared.status, 201, "{:?}", shared.body);
    let shared = id(&shared.body, "conversationID");
    let info = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{private}"),
        )
        .await;
    assert_eq!(info.body["historyVisibility"], "joined", "{:?}", info.body);

    for conv in [&private, &shared] {
        let m = send(&stack, "alice", conv, "BEFORE-carol-joined").await;
        run(
            &stack,
            "alice",
            "pinMessage",
            json!({"conversationID": conv, "messageId": m, "pin": true}),
        )
        .await;
        run(
            &stack,
            "alice",
            "addParticipants",
            json!({"conversationID": conv, "participants": ["carol"]}),
        )
        .await;
        send(&stack, "alice", conv, "after-carol-joined").await;
    }

    let mut carol = stack.socket("carol").await;
    carol.join(&private).await;
    let live = [&carol];
    let look = Look {
        reads_only: true,
        ..Look::everywhere(&private, &["carol"], &live)
    };
    stack.assert_nowhere("BEFORE-carol-joined", &look).await;
    let history = stack
        .get(
            Some(&stack.token("carol")),
            &format!("/api/conversations/{private}/messages"),
        )
        .await;
    let texts: Vec<_> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].clone())
        .collect();
    assert_eq!(texts, [json!("after-carol-joined")]);
    // Members from before still read everything.
    let bobs = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{private}/messages"),
        )
        .await;
    assert_eq!(bobs.body["messages"].as_array().unwrap().len(), 2);

    // Only admins change the setting; opening the history is the admin's decision.
    let visibility = |v: &str| json!({"conversationID": private, "historyVisibility": v});
    stack
        .refused("bob", "setHistoryVisibility", visibility("shared"))
        .await
        .is(403, "forbidden");
    let bad = stack
        .post(
            &stack.token("alice"),
            "setHistoryVisibility",
            visibility("all"),
        )
        .await;
    let bad = allo_e2e::assert_problem(bad, 422);
    assert_eq!(bad.body["field"], "historyVisibility", "{:?}", bad.body);
    let (changed, _) = run(
        &stack,
        "alice",
        "setHistoryVisibility",
        visibility("shared"),
    )
    .await;
    assert_eq!(changed["changed"], true, "{changed}");
    let opened = stack
        .get(
            Some(&stack.token("carol")),
            &format!("/api/conversations/{private}/messages"),
        )
        .await;
    assert_eq!(
        opened.body["messages"].as_array().unwrap().len(),
        2,
        "{:?}",
        opened.body
    );

    let history = stack
        .get(
            Some(&stack.token("carol")),
            &format!("/api/conversations/{shared}/messages"),
        )
        .await;
    assert_eq!(
        history.body["messages"].as_array().unwrap().len(),
        2,
        "shared: all history"
    );
    let mut replay = stack.socket("carol").await;
    let ack = replay
        .emit(
            "joinConversation",
            json!({"conversationID": shared, "lastSeq": 0}),
        )
        .await;
    assert!(ack["replayed"].as_u64().unwrap() >= 5, "{ack}");
}
