//! The scheduler, polls and reports pools against real processes: exact poll tallies under
//! concurrency through two polls processes, scheduled messages sent once across a SIGKILL and
//! after every scheduler was down, ephemeral messages swept once each, and moderation that
//! reaches moderators only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use allo_e2e::{Stack, StackOptions, id};
use futures::StreamExt;
use serde_json::{Value, json};

/// 200 users cast 1,000 votes (each moves their vote four times) all at once, through two
/// polls processes: one vote per user, tallies equal to the vote rows, and the event stream of
/// tallies never loses or double-counts a voter.
#[tokio::test(flavor = "multi_thread")]
async fn poll_tallies_are_exact_under_concurrent_votes() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        ..Default::default()
    })
    .await;
    stack.start_worker_with(&["--pool", "messages"]).await;
    stack.start_worker_with(&["--pool", "polls"]).await;
    stack.start_worker_with(&["--pool", "polls"]).await;
    let users: Vec<String> = (0..200).map(|i| format!("voter{i:03}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let conv = stack.create_conversation("alice", "group", &names).await;
    let poll = stack
        .act("alice", "createPoll", json!({"conversationID": conv, "question": "Lunch?", "options": ["Pizza", "Sushi", "Tacos", "Salad"]}))
        .await;
    let poll_id = id(&poll, "messageId");
    assert_eq!(poll["poll"]["votes"], json!([0, 0, 0, 0]));

    let votes = users
        .iter()
        .enumerate()
        .flat_map(|(u, user)| (0..5).map(move |k| (user.clone(), (u * 7 + k) % 4)));
    let stack_ref = &stack;
    let (conv_ref, poll_ref) = (&conv, &poll_id);
    futures::stream::iter(votes)
        .map(|(user, option)| async move {
            let reply = stack_ref
                .post(&stack_ref.token(&user), "votePoll", json!({"conversationID": conv_ref, "messageId": poll_ref, "optionIndex": option}))
                .await;
            assert_eq!(reply.status, 202, "{:?}", reply.body);
        })
        .buffer_unordered(48)
        .collect::<Vec<()>>()
        .await;
    stack
        .wait_count(
            "SELECT count(*) FROM commands WHERE operation = 'votePoll' AND status = 'committed'",
            1000,
            Duration::from_secs(120),
        )
        .await;

    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT user_id, option_index FROM poll_votes")
        .fetch_all(&stack.db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 200, "one vote per user");
    assert_eq!(
        rows.iter().map(|(u, _)| u).collect::<BTreeSet<_>>().len(),
        200
    );
    let mut expected = [0i64; 4];
    for (_, option) in &rows {
        expected[*option as usize] += 1;
    }
    let read = stack
        .get(
            Some(&stack.token("voter007")),
            &format!("/api/conversations/{conv}/polls/{poll_id}"),
        )
        .await;
    assert_eq!(read.body["votes"], json!(expected));
    assert_eq!(read.body["voters"], 200);
    let mine: Vec<(i32,)> =
        sqlx::query_as("SELECT option_index FROM poll_votes WHERE user_id = 'voter007'")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    assert_eq!(read.body["myVote"], json!([mine[0].0]));
    // Each pollVoted event carries the tallies at its commit: the voter count climbs by at
    // most one per event, from 1 to 200, and the last tallies are the final ones.
    let tallies: Vec<(Value,)> =
        sqlx::query_as("SELECT data->'votes' FROM events WHERE type = 'pollVoted' ORDER BY seq")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    assert_eq!(tallies.len(), 1000);
    let sums: Vec<i64> = tallies
        .iter()
        .map(|(v,)| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_i64().unwrap())
                .sum()
        })
        .collect();
    assert_eq!(sums[0], 1);
    assert!(
        sums.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
        "a vote was lost or counted twice"
    );
    assert_eq!(*sums.last().unwrap(), 200);
    assert_eq!(tallies.last().unwrap().0, json!(expected));
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_rules() {
    let stack = Stack::start(StackOptions {
        fanout: false,
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let poll = stack
        .act(
            "alice",
            "createPoll",
            json!({"conversationID": conv, "question": "Day?", "options": ["Mon", "Tue"]}),
        )
        .await;
    let p = id(&poll, "messageId");
    let vote = |i: u32| json!({"conversationID": conv, "messageId": p, "optionIndex": i});
    assert_eq!(stack.refused("bob", "votePoll", vote(2)).await.0, 422);
    assert_eq!(
        stack.refused("carol", "votePoll", vote(0)).await.1,
        "not_participant"
    );
    let voted = stack.act("bob", "votePoll", vote(1)).await;
    assert_eq!(voted["votes"], json!([0, 1]));
    assert_eq!(
        stack.act("bob", "votePoll", vote(0)).await["votes"],
        json!([1, 0]),
        "voting again moves the vote"
    );
    assert_eq!(
        stack
            .refused(
                "bob",
                "closePoll",
                json!({"conversationID": conv, "messageId": p})
            )
            .await
            .1,
        "forbidden"
    );
    stack
        .act(
            "alice",
            "closePoll",
            json!({"conversationID": conv, "messageId": p}),
        )
        .await;
    assert_eq!(stack.refused("alice", "votePoll", vote(1)).await.0, 409);
    let read = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{conv}/polls/{p}"),
        )
        .await;
    assert_eq!(
        (read.body["closed"].as_bool(), read.body["myVote"].clone()),
        (Some(true), json!([0]))
    );
    // Multiple choice toggles each option.
    let multi = stack
        .act("alice", "createPoll", json!({"conversationID": conv, "question": "Which?", "options": ["A", "B", "C"], "multipleChoice": true}))
        .await;
    let m = id(&multi, "messageId");
    let pick = |i: u32| json!({"conversationID": conv, "messageId": m, "optionIndex": i});
    stack.act("bob", "votePoll", pick(0)).await;
    assert_eq!(
        stack.act("bob", "votePoll", pick(2)).await["votes"],
        json!([1, 0, 1])
    );
    assert_eq!(
        stack.act("bob", "votePoll", pick(0)).await["votes"],
        json!([0, 0, 1])
    );
    // A poll with a closing time refuses votes after it.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let timed = stack.act("alice", "createPoll", json!({"conversationID": conv, "question": "Quick?", "options": ["Y", "N"], "closesAt": soon})).await;
    let t = id(&timed, "messageId");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        stack
            .refused(
                "bob",
                "votePoll",
                json!({"conversationID": conv, "messageId": t, "optionIndex": 0})
            )
            .await
            .0,
        409
    );
}

/// 100 messages due within a few seconds, two scheduler processes, one SIGKILLed while
/// dispatching: each message is sent exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_messages_are_sent_once_across_a_killed_scheduler() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        env: vec![
            ("ALLO_WORKER__SCHEDULER_BATCH".into(), "4".into()),
            ("ALLO_WORKER__SCHEDULER_TICK_MS".into(), "50".into()),
        ],
        ..Default::default()
    })
    .await;
    stack.start_worker_with(&["--pool", "messages"]).await;
    let first = stack.start_worker_with(&["--pool", "scheduler"]).await;
    stack.start_worker_with(&["--pool", "scheduler"]).await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;

    let start = chrono::Utc::now() + chrono::Duration::seconds(4);
    for i in 0..100 {
        let at = (start + chrono::Duration::milliseconds(i * 25)).to_rfc3339();
        let reply = stack.post(&stack.token("alice"), "scheduleMessage", json!({"conversationID": conv, "message": format!("tick {i}"), "scheduledTime": at})).await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
    }
    stack
        .wait_count(
            "SELECT count(*) FROM scheduled_messages WHERE status = 'pending'",
            100,
            Duration::from_secs(30),
        )
        .await;
    // Kill one scheduler once dispatching is under way.
    for _ in 0..200 {
        if stack
            .count("SELECT count(*) FROM scheduled_messages WHERE status = 'sent'")
            .await
            >= 8
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.kill(&first).await;
    let sent_at_kill = stack
        .count("SELECT count(*) FROM scheduled_messages WHERE status = 'sent'")
        .await;
    assert!(
        sent_at_kill < 100,
        "dispatch finished before the kill; the test proves nothing"
    );

    let events = bob.collect("message", 100, Duration::from_secs(60)).await;
    let ids: BTreeSet<String> = events.iter().map(|e| id(e, "messageId")).collect();
    assert_eq!(ids.len(), 100, "a scheduled message arrived twice");
    assert!(events.iter().all(|e| e["scheduledAt"].is_string()));
    assert!(
        bob.next_named("message", Duration::from_secs(2))
            .await
            .is_none(),
        "more than 100 messages"
    );
    assert_eq!(
        stack
            .count("SELECT count(*) FROM scheduled_messages WHERE status = 'sent'")
            .await,
        100
    );
    assert_eq!(
        stack
            .count("SELECT count(*) FROM messages WHERE scheduled_at IS NOT NULL")
            .await,
        100
    );
    assert_eq!(
        stack
            .count("SELECT count(*) FROM events WHERE type = 'message'")
            .await,
        100
    );
}

/// Scheduled messages survive every scheduler being down (sent late, lateness visible), can be
/// listed and cancelled once, and are refused with a reason if the sender left.
#[tokio::test(flavor = "multi_thread")]
async fn scheduling_survives_downtime_and_cancels_once() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    stack.start_worker_with(&["--pool", "messages"]).await;
    let scheduler = stack.start_worker_with(&["--pool", "scheduler"]).await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    let alice = stack.token("alice");

    // Due after the scheduler is killed below (a few hundred ms from now).
    let due = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let late = stack
        .act(
            "alice",
            "scheduleMessage",
            json!({"conversationID": conv, "message": "while you were down", "scheduledTime": due}),
        )
        .await;
    let late_id = id(&late, "scheduledMessageId");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let cancelled = stack
        .act(
            "alice",
            "scheduleMessage",
            json!({"conversationID": conv, "message": "never", "scheduledTime": later}),
        )
        .await;
    let cancel_id = id(&cancelled, "scheduledMessageId");
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let orphan = stack
        .act(
            "bob",
            "scheduleMessage",
            json!({"conversationID": conv, "message": "after I left", "scheduledTime": soon}),
        )
        .await;
    let orphan_id = id(&orphan, "scheduledMessageId");
    // Cancelling: only the sender, only once.
    let cancel = |sid: &str| json!({"scheduledMessageId": sid});
    assert_eq!(
        stack
            .refused("bob", "cancelScheduledMessage", cancel(&cancel_id))
            .await
            .0,
        404
    );
    let mut alice_socket = stack.socket("alice").await;
    alice_socket.join(&conv).await;
    stack.kill(&scheduler).await;

    let listed = stack
        .get(Some(&alice), "/api/scheduled?status=pending")
        .await;
    assert_eq!(listed.body.as_array().map(Vec::len), Some(2));
    // Bob leaves before his message is due.
    stack
        .act("bob", "leaveConversation", json!({"conversationID": conv}))
        .await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(
        stack.count("SELECT count(*) FROM messages").await,
        0,
        "nothing is sent while every scheduler is down"
    );

    stack.start_worker_with(&["--pool", "scheduler"]).await;
    stack
        .act("alice", "cancelScheduledMessage", cancel(&cancel_id))
        .await;
    assert_eq!(
        stack
            .refused("alice", "cancelScheduledMessage", cancel(&cancel_id))
            .await
            .0,
        409
    );
    let message = alice_socket
        .next_matching(
            "message",
            |m| m["message"] == "while you were down",
            Duration::from_secs(10),
        )
        .await
        .expect("sent on recovery");
    assert!(message["scheduledAt"].as_str().unwrap() < message["createdAt"].as_str().unwrap());
    assert_eq!(
        stack
            .refused("alice", "cancelScheduledMessage", cancel(&late_id))
            .await
            .0,
        409,
        "a sent message cannot be cancelled"
    );
    let all = stack.get(Some(&alice), "/api/scheduled").await;
    let by_id: BTreeMap<String, Value> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (id(s, "scheduledMessageId"), s.clone()))
        .collect();
    assert_eq!(by_id[&late_id]["status"], "sent");
    assert!(
        by_id[&late_id]["lateByMs"].as_i64().unwrap() >= 1000,
        "{:?}",
        by_id[&late_id]
    );
    assert_eq!(by_id[&cancel_id]["status"], "cancelled");
    stack
        .wait_count(
            "SELECT count(*) FROM scheduled_messages WHERE status = 'rejected'",
            1,
            Duration::from_secs(10),
        )
        .await;
    let bobs = stack.get(Some(&stack.token("bob")), "/api/scheduled").await;
    let rejected = bobs
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scheduledMessageId"] == orphan_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (rejected["status"].as_str(), rejected["code"].as_str()),
        (Some("rejected"), Some("not_participant"))
    );
    assert!(rejected["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(stack.count("SELECT count(*) FROM messages").await, 1);
}

/// Expired ephemeral messages are deleted by the sweeper, one `messageDeleted` (reason
/// `expired`) each, with two scheduler processes sweeping.
#[tokio::test(flavor = "multi_thread")]
async fn expired_messages_are_swept_once_each() {
    let mut stack = Stack::start(StackOptions {
        env: vec![
            ("ALLO_WORKER__SCHEDULER_TICK_MS".into(), "100".into()),
            ("ALLO_WORKER__SCHEDULER_BATCH".into(), "3".into()),
        ],
        ..Default::default()
    })
    .await;
    stack.start_worker().await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    let mut sent = BTreeSet::new();
    for i in 0..10 {
        let m = stack
            .act(
                "alice",
                "sendEphemeralMessage",
                json!({"conversationID": conv, "message": format!("gone {i}"), "expiresIn": 1000}),
            )
            .await;
        sent.insert(id(&m, "messageId"));
    }
    let deleted = bob
        .collect("messageDeleted", 10, Duration::from_secs(20))
        .await;
    assert!(deleted.iter().all(|d| d["reason"] == "expired"));
    let ids: BTreeSet<String> = deleted.iter().map(|d| id(d, "messageId")).collect();
    assert_eq!(ids, sent);
    assert!(
        bob.next_named("messageDeleted", Duration::from_secs(2))
            .await
            .is_none(),
        "swept twice"
    );
    assert_eq!(
        stack
            .count("SELECT count(*) FROM events WHERE type = 'messageDeleted'")
            .await,
        10
    );
    assert_eq!(
        stack
            .count(
                "SELECT count(*) FROM messages WHERE deleted_reason = 'expired' AND body IS NULL"
            )
            .await,
        10
    );
}

/// Reports reach moderators only (the room never learns the reporter), a second report by the
/// same user is refused, the threshold hides the message, a moderator restores or removes it.
#[tokio::test(flavor = "multi_thread")]
async fn reports_reach_moderators_and_the_threshold_hides() {
    let stack = Stack::start(StackOptions {
        env: vec![("ALLO_LIMITS__REPORTS_HIDE_THRESHOLD".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol", "dave"])
        .await;
    let mut alice = stack.socket("alice").await;
    alice.join(&conv).await;
    let mut moderator = stack.socket_with_roles("mia", &["moderator"]).await;
    let m = id(
        &stack
            .act(
                "alice",
                "sendMessage",
                json!({"conversationID": conv, "message": "buy cheap watches"}),
            )
            .await,
        "messageId",
    );
    let report = |reason: &str| json!({"conversationID": conv, "messageId": m, "reason": reason, "details": "seen it before"});

    let first = stack
        .post_wait(&stack.token("bob"), "reportMessage", report("spam"))
        .await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let seen = moderator
        .next_named("messageReported", Duration::from_secs(10))
        .await
        .expect("moderators hear of it");
    assert_eq!(
        (
            seen["reporter"].as_str(),
            seen["reason"].as_str(),
            seen["messageId"].as_str()
        ),
        (Some("bob"), Some("spam"), Some(m.as_str()))
    );
    assert_eq!(seen["message"]["message"], "buy cheap watches");
    assert_eq!(
        stack
            .refused("bob", "reportMessage", report("spam"))
            .await
            .0,
        409
    );
    assert_eq!(
        stack
            .refused("alice", "reportMessage", report("other"))
            .await
            .0,
        422,
        "not your own message"
    );
    assert_eq!(
        stack
            .post(
                &stack.token("bob"),
                "reportMessage",
                json!({"conversationID": conv, "messageId": m, "reason": "boring"})
            )
            .await
            .status,
        422
    );

    stack.act("carol", "reportMessage", report("spam")).await;
    let hidden = alice.event_about("messageDeleted", &m).await;
    assert_eq!(hidden["reason"], "hidden");
    assert!(hidden.get("reporter").is_none());
    let history = stack
        .get(
            Some(&stack.token("dave")),
            &format!("/api/conversations/{conv}/messages"),
        )
        .await;
    assert_eq!(history.body["messages"], json!([]));
    assert!(
        alice
            .next_named("messageReported", Duration::from_secs(1))
            .await
            .is_none(),
        "the room saw a report"
    );

    let queue = stack
        .get(
            Some(&stack.token_with_roles("mia", &["moderator"])),
            "/api/moderation/reports",
        )
        .await;
    let reports = queue.body.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(
        reports
            .iter()
            .map(|r| r["reporter"].as_str().unwrap())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["bob", "carol"])
    );
    assert!(
        reports
            .iter()
            .all(|r| r["messageAtReport"]["message"] == "buy cheap watches" && r["hidden"] == true)
    );
    assert_eq!(
        stack
            .get(Some(&stack.token("bob")), "/api/moderation/reports")
            .await
            .status,
        403
    );
    let report_id = id(&reports[0], "reportId");
    let not_mod = stack
        .post(
            &stack.token("bob"),
            "resolveReport",
            json!({"reportId": report_id, "action": "dismiss"}),
        )
        .await;
    assert_eq!(not_mod.status, 403, "refused at ingress");

    let mia = "mia";
    let restored = stack
        .post_wait(
            &stack.token_with_roles(mia, &["moderator"]),
            "restoreMessage",
            json!({"conversationID": conv, "messageId": m}),
        )
        .await;
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    assert_eq!(
        alice.event_about("messageRestored", &m).await["message"],
        "buy cheap watches"
    );
    let history = stack
        .get(
            Some(&stack.token("dave")),
            &format!("/api/conversations/{conv}/messages"),
        )
        .await;
    assert_eq!(history.body["messages"][0]["messageId"], m.as_str());

    // A new report, then removal by a moderator: a tombstone with reason `removed`.
    stack
        .act("dave", "reportMessage", report("harassment"))
        .await;
    let open = stack
        .get(
            Some(&stack.token_with_roles(mia, &["moderator"])),
            "/api/moderation/reports",
        )
        .await;
    let dave_report = id(&open.body[0], "reportId");
    let resolved = stack
        .post_wait(
            &stack.token_with_roles(mia, &["moderator"]),
            "resolveReport",
            json!({"reportId": dave_report, "action": "remove"}),
        )
        .await;
    assert_eq!(resolved.status, 200, "{:?}", resolved.body);
    assert_eq!(
        alice
            .next_matching(
                "messageDeleted",
                |d| d["reason"] == "removed",
                Duration::from_secs(10)
            )
            .await
            .unwrap()["messageId"],
        m.as_str()
    );
    let tomb = stack
        .get(
            Some(&stack.token("dave")),
            &format!("/api/conversations/{conv}/messages/{m}"),
        )
        .await;
    assert_eq!(
        (
            tomb.body["status"].as_str(),
            tomb.body["deletedReason"].as_str(),
            tomb.body["message"].clone()
        ),
        (Some("deleted"), Some("removed"), Value::Null)
    );
    let again = stack
        .post_wait(
            &stack.token_with_roles(mia, &["moderator"]),
            "resolveReport",
            json!({"reportId": dave_report, "action": "dismiss"}),
        )
        .await;
    assert_eq!(again.status, 409);
}
