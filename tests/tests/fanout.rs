//! The fan-out with the real npm socket.io-client: in-order, gap-free delivery while workers
//! race; replicas; a replica killed mid-stream and its clients resuming on another; removal;
//! the original's socket events; typing and presence.

use std::time::Duration;

use allo_e2e::{SocketClient, Stack, StackOptions};
use futures::StreamExt;
use serde_json::{Value, json};

fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

async fn send_many(stack: &Stack, conv: &str, users: &[&str], per_user: usize) {
    let sends = users
        .iter()
        .flat_map(|u| (0..per_user).map(move |i| (*u, i)))
        .map(|(user, i)| async move {
            let reply = stack
                .post(
                    &stack.token(user),
                    "sendMessage",
                    json!({"conversationID": conv, "message": format!("{user}-{i}")}),
                )
                .await;
            assert_eq!(reply.status, 202, "{:?}", reply.body);
        });
    futures::stream::iter(sends)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// Two messages workers race on one conversation (both apply some: they do not split the
/// partitions here, as during a hand-over); every client gets seq 2..=201 in order.
#[tokio::test(flavor = "multi_thread")]
async fn delivery_is_in_order_and_gap_free_while_workers_race() {
    let stack = Stack::start(StackOptions {
        workers: 2,
        env: vec![("ALLO_WORKER__SPLIT_PARTITIONS".into(), "false".into())],
        ..Default::default()
    })
    .await;
    let users = ["u1", "u2", "u3", "u4", "u5"];
    let conv = stack.create_conversation("alice", "group", &users).await;
    let mut clients = Vec::new();
    for user in ["alice", "u1", "u2"] {
        let mut client = stack.socket(user).await;
        client.join(&conv).await;
        clients.push(client);
    }
    send_many(&stack, &conv, &users, 40).await;
    for client in &mut clients {
        let events = client
            .collect("message", 200, Duration::from_secs(60))
            .await;
        assert_eq!(
            seqs(&events),
            (2..=201).collect::<Vec<_>>(),
            "out of order, gap or duplicate"
        );
        assert!(
            client
                .next_named("message", Duration::from_millis(500))
                .await
                .is_none(),
            "a duplicate"
        );
    }
    // Both processes applied some of the 200, or nothing raced.
    let (first, second) = (
        stack.committed_by("worker-0", "sendMessage").await,
        stack.committed_by("worker-1", "sendMessage").await,
    );
    assert!(
        first > 0 && second > 0,
        "one worker applied everything: {first} + {second}"
    );
    assert_eq!(first + second, 200);
    for worker in ["worker-0", "worker-1"] {
        assert!(
            !stack
                .log(worker)
                .contains("command failed; will be redelivered"),
            "{worker} had to redeliver a command"
        );
    }
}

/// A client on replica A and one on replica B both get everything; a client resuming with
/// `lastSeq` gets exactly what it missed; too far behind, it is told to reload.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_deliver_everything_and_resume_is_exact() {
    let mut stack = Stack::start(StackOptions {
        env: vec![("ALLO_FANOUT__REPLAY_MAX".into(), "10".into())],
        ..Default::default()
    })
    .await;
    let (_, replica_b) = stack.start_fanout().await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut on_a = stack.socket("alice").await;
    on_a.join(&conv).await;
    let mut on_b = stack.socket_at(&replica_b, "bob").await;
    on_b.join(&conv).await;
    send_many(&stack, &conv, &["alice", "bob"], 15).await;
    for client in [&mut on_a, &mut on_b] {
        let events = client.collect("message", 30, Duration::from_secs(30)).await;
        assert_eq!(seqs(&events), (2..=31).collect::<Vec<_>>());
    }
    let mut late = stack.socket_at(&replica_b, "bob").await;
    let ack = late
        .emit(
            "joinConversation",
            json!({"conversationID": conv, "lastSeq": 25}),
        )
        .await;
    assert_eq!(
        (
            ack["recovered"].as_bool(),
            ack["replayed"].as_i64(),
            ack["lastSeq"].as_i64()
        ),
        (Some(true), Some(6), Some(31))
    );
    let replayed = late.collect("message", 6, Duration::from_secs(10)).await;
    assert_eq!(seqs(&replayed), (26..=31).collect::<Vec<_>>());
    let mut stale = stack.socket("bob").await;
    let ack = stale
        .emit(
            "joinConversation",
            json!({"conversationID": conv, "lastSeq": 3}),
        )
        .await;
    assert_eq!(
        (
            ack["joined"].as_bool(),
            ack["recovered"].as_bool(),
            ack["replayed"].as_i64()
        ),
        (Some(true), Some(false), Some(0))
    );
    assert!(
        stale
            .next_named("message", Duration::from_millis(500))
            .await
            .is_none(),
        "replayed despite recovered=false"
    );
    // Live delivery continues after a resume, with no duplicate at the seam.
    stack
        .act(
            "alice",
            "sendMessage",
            json!({"conversationID": conv, "message": "after the seam"}),
        )
        .await;
    assert_eq!(
        late.next_named("message", Duration::from_secs(10))
            .await
            .unwrap()["seq"],
        32
    );
}

/// Replica A is SIGKILLed mid-stream; its client reconnects to replica B with the last seq it
/// saw and ends up with every seq exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_loses_nothing_for_resuming_clients() {
    let mut stack = Stack::start(StackOptions::default()).await;
    let (_, replica_b) = stack.start_fanout().await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut watcher = stack.socket_at(&replica_b, "bob").await;
    watcher.join(&conv).await;
    let mut client = stack.socket("alice").await;
    client.join(&conv).await;

    let total = 60;
    let sender = {
        let (token, url, conv) = (stack.token("alice"), stack.api_url.clone(), conv.clone());
        let http = stack.http.clone();
        tokio::spawn(async move {
            for i in 0..total {
                let response = http
                    .post(format!("{url}/api/chat/sendMessage"))
                    .bearer_auth(&token)
                    .json(&json!({"conversationID": conv, "message": format!("m{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 202);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let mut seen = client.collect("message", 15, Duration::from_secs(30)).await;
    stack.kill("fanout").await;
    assert!(
        client
            .next_kind("disconnect", Duration::from_secs(10))
            .await
            .is_some()
    );
    let last = seen.last().unwrap()["seq"].as_i64().unwrap();
    let mut resumed = stack.socket_at(&replica_b, "alice").await;
    let ack = resumed
        .emit(
            "joinConversation",
            json!({"conversationID": conv, "lastSeq": last}),
        )
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    sender.await.unwrap();
    let rest = resumed
        .collect(
            "message",
            (total as i64 + 1 - last) as usize,
            Duration::from_secs(30),
        )
        .await;
    seen.extend(rest);
    assert_eq!(seqs(&seen), (2..=(total as i64 + 1)).collect::<Vec<_>>());
    assert!(
        resumed
            .next_named("message", Duration::from_millis(500))
            .await
            .is_none(),
        "a duplicate"
    );
    let watched = watcher
        .collect("message", total, Duration::from_secs(30))
        .await;
    assert_eq!(seqs(&watched), (2..=(total as i64 + 1)).collect::<Vec<_>>());
}

/// A removed participant stops receiving at once and cannot rejoin the room.
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_participant_receives_nothing_after_removal() {
    let stack = Stack::start(StackOptions::default()).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol"])
        .await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    let mut carol = stack.socket("carol").await;
    carol.join(&conv).await;
    stack
        .act(
            "alice",
            "removeParticipant",
            json!({"conversationID": conv, "participantID": "bob"}),
        )
        .await;
    let removed = bob
        .next_named("participantRemoved", Duration::from_secs(10))
        .await
        .expect("told of the removal");
    assert_eq!(removed["userID"], "bob");
    for i in 0..5 {
        stack
            .act(
                "alice",
                "sendMessage",
                json!({"conversationID": conv, "message": format!("secret {i}")}),
            )
            .await;
    }
    assert_eq!(
        carol
            .collect("message", 5, Duration::from_secs(10))
            .await
            .len(),
        5
    );
    assert!(
        bob.next_named("message", Duration::from_secs(2))
            .await
            .is_none(),
        "a removed participant got a message"
    );
    let ack = bob
        .emit("joinConversation", json!({"conversationID": conv}))
        .await;
    assert_eq!(
        (ack["joined"].as_bool(), ack["code"].as_str()),
        (Some(false), Some("not_participant")),
        "{ack}"
    );
}

/// The original's client events drive a conversation with no HTTP at all; acks carry the
/// commandId; bad input is refused in the ack, naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn the_original_socket_events_drive_a_conversation() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut alice = stack.socket("alice").await;
    let mut bob = stack.socket("bob").await;
    let ack = alice
        .command(
            "createConversation",
            json!({"participants": ["bob"], "type": "group", "topic": "sockets only"}),
        )
        .await;
    let conv = ack["conversationID"].as_str().unwrap().to_string();
    assert_eq!(
        bob.next_named("conversationCreated", Duration::from_secs(10))
            .await
            .unwrap()["conversationID"],
        conv.as_str()
    );
    alice.join(&conv).await;
    bob.join(&conv).await;
    let send = alice
        .command(
            "sendMessage",
            json!({"conversationID": conv, "message": "over the socket"}),
        )
        .await;
    let m = send["messageId"].as_str().unwrap().to_string();
    assert_eq!(
        bob.event_about("message", &m).await["message"],
        "over the socket"
    );

    let r = |extra: Value| {
        let mut body = json!({"conversationID": conv, "messageId": m});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    bob.command("reactionMessage", r(json!({"emoji": "👍"})))
        .await;
    assert_eq!(
        alice.event_about("messageReaction", &m).await["userID"],
        "bob"
    );
    alice
        .command(
            "editMessage",
            r(json!({"newMessage": "edited over the socket"})),
        )
        .await;
    assert_eq!(
        bob.event_about("messageEdited", &m).await["newMessage"],
        "edited over the socket"
    );
    bob.command("pinMessage", r(json!({"pin": true}))).await;
    let pinned = alice.event_about("messagePinned", &m).await;
    assert_eq!(
        (pinned["pinned"].as_bool(), pinned["pinnedBy"].as_str()),
        (Some(true), Some("bob"))
    );
    bob.command("messageRead", r(json!({}))).await;
    assert_eq!(
        alice.event_about("messageStatusUpdate", &m).await["status"],
        "read"
    );
    let kinds = [
        (
            "sendSecureMessage",
            json!({"conversationID": conv, "message": "aGVsbG8=", "encrypted": true, "encryptionAlgorithm": "AES-256-GCM"}),
        ),
        (
            "sendVoiceMessage",
            json!({"conversationID": conv, "voiceUrl": "https://cdn.example.com/v.ogg"}),
        ),
        (
            "sendSticker",
            json!({"conversationID": conv, "stickerUrl": "https://cdn.example.com/s.png"}),
        ),
        (
            "sendEphemeralMessage",
            json!({"conversationID": conv, "message": "brief", "expiresIn": 60000}),
        ),
        (
            "scheduleMessage",
            json!({"conversationID": conv, "message": "scheduled in the past", "scheduledTime": "2020-01-01T00:00:00Z"}),
        ),
        (
            "createPoll",
            json!({"conversationID": conv, "question": "Tea?", "options": ["Yes", "No"]}),
        ),
    ];
    for (event, body) in kinds {
        let ack = alice.command(event, body).await;
        let got = bob
            .next_named("message", Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{event}: no message event"));
        assert_eq!(got["userID"], "alice", "{event}: {got}");
        if let Some(id) = ack["messageId"].as_str() {
            assert_eq!(got["messageId"], id, "{event}: {got}");
        }
        if event == "createPoll" {
            let poll = got["messageId"].as_str().unwrap().to_string();
            bob.command(
                "votePoll",
                json!({"conversationID": conv, "messageId": poll, "optionIndex": 0}),
            )
            .await;
            assert_eq!(
                alice.event_about("pollVoted", &poll).await["votes"],
                json!([1, 0])
            );
        }
    }
    let other = stack.create_conversation("bob", "group", &["alice"]).await;
    bob.join(&other).await;
    alice
        .command(
            "forwardMessage",
            json!({"fromConversationID": conv, "toConversationID": other, "messageId": m}),
        )
        .await;
    let forwarded = bob
        .next_named("messageForwarded", Duration::from_secs(10))
        .await
        .expect("messageForwarded");
    assert_eq!(forwarded["conversationID"], other.as_str(), "{forwarded}");
    let report = bob
        .command("reportMessage", r(json!({"reason": "spam"})))
        .await;
    let reported = stack
        .outcome(&stack.token("bob"), report["commandId"].as_str().unwrap())
        .await;
    assert_eq!(reported["status"], "committed", "{reported}");
    assert_eq!(
        stack
            .count("SELECT count(*) FROM reports WHERE reporter_id = 'bob'")
            .await,
        1
    );
    let own = alice
        .command(
            "sendMessage",
            json!({"conversationID": conv, "message": "oops"}),
        )
        .await;
    let oops = own["messageId"].as_str().unwrap().to_string();
    bob.event_about("message", &oops).await;
    alice
        .command(
            "unsendMessage",
            json!({"conversationID": conv, "messageId": oops}),
        )
        .await;
    bob.event_about("messageUnsent", &oops).await;
    alice.command("deleteMessage", r(json!({}))).await;
    bob.event_about("messageDeleted", &m).await;
    // Bad input is refused in the ack, exactly as over HTTP.
    let bad = alice
        .emit(
            "sendMessage",
            json!({"conversationID": conv, "message": ""}),
        )
        .await;
    assert_eq!(
        (
            bad["error"]["status"].as_i64(),
            bad["error"]["field"].as_str()
        ),
        (Some(422), Some("message"))
    );
    let bad = alice
        .emit("votePoll", json!({"conversationID": conv}))
        .await;
    assert_eq!(bad["error"]["field"], "messageId");
    assert_eq!(bad["error"]["status"], 422);
    assert!(bad.get("commandId").is_none());
}

/// Typing is relayed to the others (not the typist), rate-limited; presence lists who is
/// online across replicas.
#[tokio::test(flavor = "multi_thread")]
async fn typing_and_presence_cross_replicas() {
    let mut stack = Stack::start(StackOptions {
        workers: 1,
        ..Default::default()
    })
    .await;
    let (_, replica_b) = stack.start_fanout().await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol"])
        .await;
    let mut alice = stack.socket("alice").await;
    alice.join(&conv).await;
    let mut bob = stack.socket_at(&replica_b, "bob").await;
    bob.join(&conv).await;
    let typing_on = json!({"conversationID": conv, "typing": true});
    let first = alice.emit("typing", typing_on.clone()).await;
    assert_eq!(first["relayed"], true, "{first}");
    let sent_at = std::time::Instant::now();
    let second = alice.emit("typing", typing_on.clone()).await;
    assert_eq!(second["relayed"], false, "inside the interval: {second}");
    let typing = bob
        .next_named("typing", Duration::from_secs(5))
        .await
        .expect("typing relayed");
    assert_eq!(
        (typing["userID"].as_str(), typing["typing"].as_bool()),
        (Some("alice"), Some(true))
    );
    // Watch for longer than the 500 ms interval: a dropped signal must not come late either.
    assert!(
        bob.next_named("typing", Duration::from_millis(900))
            .await
            .is_none(),
        "not rate-limited"
    );
    assert!(
        alice
            .next_named("typing", Duration::from_millis(100))
            .await
            .is_none(),
        "echoed to the typist"
    );
    // After the interval the next signal goes through again.
    assert!(sent_at.elapsed() >= Duration::from_millis(500));
    let third = alice
        .emit("typing", json!({"conversationID": conv, "typing": false}))
        .await;
    assert_eq!(third["relayed"], true, "{third}");
    let stopped = bob
        .next_named("typing", Duration::from_secs(5))
        .await
        .expect("typing after the interval");
    assert_eq!(stopped["typing"], false);
    let online = alice
        .emit("presence", json!({"conversationID": conv}))
        .await;
    assert_eq!(online["online"], json!(["alice", "bob"]));
    let seen = alice
        .next_matching("presence", |p| p["userID"] == "bob", Duration::from_secs(5))
        .await;
    assert_eq!(seen.expect("bob came online")["online"], true);
    drop(bob);
    let gone = alice
        .next_matching(
            "presence",
            |p| p["userID"] == "bob" && p["online"] == false,
            Duration::from_secs(10),
        )
        .await;
    assert!(gone.is_some(), "bob going offline was not announced");
    let online = alice
        .emit("presence", json!({"conversationID": conv}))
        .await;
    assert_eq!(online["online"], json!(["alice"]));
}

/// Puts event `seq` of `conv` in the Postgres log (marked published, so no relay touches it),
/// as a committing worker would, and returns its envelope.
async fn log_event(stack: &Stack, conv: &str, seq: i64) -> Value {
    let conv_id: uuid::Uuid = conv.parse().expect("conversation id");
    let event = json!({
        "eventId": uuid::Uuid::now_v7(),
        "type": "message",
        "conversationID": conv,
        "seq": seq,
        "commandId": uuid::Uuid::now_v7(),
        "actor": "alice",
        "at": chrono::Utc::now(),
        "data": {"messageId": uuid::Uuid::now_v7(), "userID": "alice", "conversationID": conv, "message": format!("injected {seq}")},
    });
    sqlx::query(
        "INSERT INTO events (id, conversation_id, seq, type, command_id, actor_id, at, data)
         VALUES ($1, $2, $3, 'message', $4, 'alice', now(), $5)",
    )
    .bind(uuid::Uuid::parse_str(event["eventId"].as_str().unwrap()).unwrap())
    .bind(conv_id)
    .bind(seq)
    .bind(uuid::Uuid::parse_str(event["commandId"].as_str().unwrap()).unwrap())
    .bind(&event["data"])
    .execute(&stack.db)
    .await
    .expect("event row");
    sqlx::query("UPDATE conversations SET last_seq = greatest(last_seq, $2) WHERE id = $1")
        .bind(conv_id)
        .bind(seq)
        .execute(&stack.db)
        .await
        .expect("last_seq");
    event
}

/// Publishes an event on the conversation's subject, as a worker (or the relay) would.
async fn publish_event(stack: &Stack, event: &Value) {
    let subjects = allo_common::subjects::Subjects::of(&stack.settings);
    let conv = allo_common::ids::ConversationId::parse(event["conversationID"].as_str().unwrap())
        .expect("conversation id");
    stack
        .nats
        .publish(
            subjects.event(conv, allo_common::event::EventType::Message),
            event.to_string().into(),
        )
        .await
        .expect("publish");
    stack.nats.flush().await.expect("flush");
}

/// The feed, driven with events injected on NATS and in the log (no worker runs): events that
/// arrive out of order inside the reorder window are delivered in order without reading the
/// log; a gap that does not close is filled from the log; a last event that was never
/// published is found by the quiet-second tail check; a republished event is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn the_feed_reorders_fills_gaps_checks_the_tail_and_drops_duplicates() {
    let mut stack = Stack::start(StackOptions {
        env: vec![("ALLO_FANOUT__REORDER_WINDOW_MS".into(), "1500".into())],
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    stack.kill("worker-0").await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    async fn fills(stack: &Stack) -> f64 {
        stack
            .fanout_counter(&stack.fanout_url, "allo_gap_fills_total", &[])
            .await
    }

    // Reorder window: 4 and 3 arrive first, 2 shortly after; no log read.
    let e2 = log_event(&stack, &conv, 2).await;
    let e3 = log_event(&stack, &conv, 3).await;
    let e4 = log_event(&stack, &conv, 4).await;
    publish_event(&stack, &e4).await;
    publish_event(&stack, &e3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_event(&stack, &e2).await;
    let got = bob.collect("message", 3, Duration::from_secs(10)).await;
    assert_eq!(seqs(&got), vec![2, 3, 4], "not reordered");
    assert_eq!(got[0]["eventId"], e2["eventId"]);
    assert_eq!(
        fills(&stack).await,
        0.0,
        "the reorder window should have closed the gap, not the log"
    );

    // Gap fill: 6 is committed but its publish is lost; 5 and 7 arrive.
    let e5 = log_event(&stack, &conv, 5).await;
    let e6 = log_event(&stack, &conv, 6).await;
    let e7 = log_event(&stack, &conv, 7).await;
    publish_event(&stack, &e5).await;
    publish_event(&stack, &e7).await;
    let got = bob.collect("message", 3, Duration::from_secs(10)).await;
    assert_eq!(seqs(&got), vec![5, 6, 7], "the gap was not filled in order");
    assert_eq!(got[1]["eventId"], e6["eventId"]);
    assert_eq!(got[1]["message"], "injected 6");
    assert!(fills(&stack).await >= 1.0, "6 did not come from the log");

    // Tail check: 8 is committed and never published at all.
    let e8 = log_event(&stack, &conv, 8).await;
    let tail = bob
        .next_named("message", Duration::from_secs(5))
        .await
        .expect("the tail check found the lost last event");
    assert_eq!(
        (tail["seq"].as_i64(), &tail["eventId"]),
        (Some(8), &e8["eventId"])
    );

    // Duplicates: 8 republished, 9 published twice; 10 closes the sequence. Events reach the
    // socket in feed order, so a duplicate would arrive before 10.
    publish_event(&stack, &e8).await;
    let e9 = log_event(&stack, &conv, 9).await;
    publish_event(&stack, &e9).await;
    publish_event(&stack, &e9).await;
    let e10 = log_event(&stack, &conv, 10).await;
    publish_event(&stack, &e10).await;
    let mut rest = Vec::new();
    while rest.last().and_then(|e: &Value| e["seq"].as_i64()) != Some(10) {
        rest.push(
            bob.next_named("message", Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("10 never came; got {rest:?}")),
        );
    }
    assert_eq!(seqs(&rest), vec![9, 10], "a duplicate was delivered");
}

/// Leaving stops delivery: a socket that emits `leaveConversation` and a user who leaves the
/// conversation (HTTP) get nothing after that, while others still get everything.
#[tokio::test(flavor = "multi_thread")]
async fn leaving_stops_delivery() {
    let stack = Stack::start(StackOptions::default()).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol", "dave"])
        .await;
    let control = stack
        .create_conversation("alice", "group", &["bob", "carol"])
        .await;
    let mut bob = stack.socket("bob").await;
    let mut carol = stack.socket("carol").await;
    let mut dave = stack.socket("dave").await;
    for socket in [&mut bob, &mut carol, &mut dave] {
        socket.join(&conv).await;
    }
    bob.join(&control).await;
    carol.join(&control).await;
    let send = |c: &str, text: &str| json!({"conversationID": c, "message": text});

    stack
        .act("alice", "sendMessage", send(&conv, "before"))
        .await;
    for socket in [&mut bob, &mut carol, &mut dave] {
        let got = socket.next_named("message", Duration::from_secs(10)).await;
        assert_eq!(got.expect("before")["message"], "before");
    }
    let left = bob
        .emit("leaveConversation", json!({"conversationID": conv}))
        .await;
    assert_eq!(left["left"], true, "{left}");
    stack
        .act(
            "carol",
            "leaveConversation",
            json!({"conversationID": conv}),
        )
        .await;
    let carol_left = carol
        .next_named("participantLeft", Duration::from_secs(10))
        .await
        .expect("carol sees her own leave event");
    assert_eq!(carol_left["userID"], "carol");

    stack
        .act("alice", "sendMessage", send(&conv, "after"))
        .await;
    stack
        .act("alice", "sendMessage", send(&control, "control"))
        .await;
    assert_eq!(
        dave.next_named("message", Duration::from_secs(10))
            .await
            .expect("dave still receives")["message"],
        "after"
    );
    // Bob and carol still get the control conversation's message, published after "after".
    for socket in [&mut bob, &mut carol] {
        let got = socket
            .next_named("message", Duration::from_secs(10))
            .await
            .expect("control message");
        assert_eq!(got["message"], "control", "a message after leaving: {got}");
        assert!(
            socket
                .next_matching(
                    "message",
                    |m| m["message"] == "after",
                    Duration::from_secs(1)
                )
                .await
                .is_none(),
            "delivered after leaving"
        );
    }
}

/// Two readers of one conversation, bob's client stopped (SIGSTOP) until the fan-out counts a
/// slow consumer, then resumed; returns the stack, bob, carol and the messages sent.
async fn stall_a_reader() -> (Stack, SocketClient, SocketClient, i64) {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("ALLO_FANOUT__SOCKET_BUFFER".into(), "64".into()),
            ("ALLO_LIMITS__MESSAGE_MAX_CHARS".into(), "60000".into()),
            ("ALLO_LIMITS__BODY_MAX_BYTES".into(), "262144".into()),
            ("ALLO_LIMITS__RATE_MAX_PER_WINDOW".into(), "100000".into()),
        ],
        ..Default::default()
    })
    .await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol"])
        .await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    let mut carol = stack.socket("carol").await;
    carol.join(&conv).await;
    let pid = bob.pid().expect("bob's client pid").to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, pid.as_str()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    signal("-STOP");
    let big = "x".repeat(60_000);
    let alice = stack.token("alice");
    let mut sent = 0;
    while stack
        .fanout_counter(&stack.fanout_url, "allo_slow_consumers_total", &[])
        .await
        < 1.0
    {
        assert!(
            sent < 600,
            "no slow consumer after {sent} messages of 60 kB"
        );
        let posts = (0..20).map(|_| {
            stack.post(
                &alice,
                "sendMessage",
                json!({"conversationID": conv, "message": big}),
            )
        });
        for reply in futures::future::join_all(posts).await {
            assert_eq!(reply.status, 202, "{:?}", reply.body);
        }
        sent += 20;
        stack
            .wait_count_at_least(
                "SELECT count(*) FROM messages",
                sent,
                Duration::from_secs(60),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal("-CONT");
    (stack, bob, carol, sent)
}

/// A socket that stops reading is cut off once its send buffer is full, instead of being
/// buffered without bound; a socket that keeps reading gets everything and stays connected.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_consumer_is_cut_off_and_a_reader_is_not() {
    let (stack, mut bob, mut carol, sent) = stall_a_reader().await;
    let got = carol
        .collect("message", sent as usize, Duration::from_secs(60))
        .await;
    assert_eq!(got.len(), sent as usize);
    assert!(
        carol
            .next_kind("disconnect", Duration::from_millis(200))
            .await
            .is_none()
    );
    // Bob gets what was buffered before the cut, then nothing: fewer than were sent.
    let mut bobs = 0;
    while bob
        .next_named("message", Duration::from_secs(2))
        .await
        .is_some()
    {
        bobs += 1;
    }
    assert!(bobs < sent, "bob got all {sent}: not cut off");
    assert_eq!(
        stack
            .fanout_counter(&stack.fanout_url, "allo_slow_consumers_total", &[])
            .await,
        1.0,
        "only the stopped socket was cut off"
    );
}

/// The README's promise: the slow socket is disconnected (`io server disconnect`) so that it
/// reconnects and resumes, instead of staying connected and silently missing events
/// (socketioxide's `disconnect()` fails with `InternalChannelFull` while the buffer is full).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_consumer_is_told_it_was_disconnected() {
    let (_stack, mut bob, _carol, sent) = stall_a_reader().await;
    let gone = bob.next_kind("disconnect", Duration::from_secs(20)).await;
    assert!(
        gone.is_some(),
        "the slow socket was not disconnected after {sent} messages; it got {} lines",
        bob.backlog().len(),
    );
}

/// A resume whose replay does not fit the socket's send buffer is refused and the socket cut
/// off (it reconnects and resumes from what it saw), never joined with part of the replay
/// missing behind `recovered: true`.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_that_overflows_the_buffer_is_refused_not_cut_short() {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("ALLO_FANOUT__SOCKET_BUFFER".into(), "8".into()),
            ("ALLO_LIMITS__RATE_MAX_PER_WINDOW".into(), "100000".into()),
        ],
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    send_many(&stack, &conv, &["alice"], 40).await;
    stack
        .wait_count("SELECT count(*) FROM messages", 40, Duration::from_secs(30))
        .await;
    let mut late = stack.socket("bob").await;
    let ack = late
        .emit(
            "joinConversation",
            json!({"conversationID": conv, "lastSeq": 1}),
        )
        .await;
    let replayed_all =
        ack["joined"] == true && ack["recovered"] == true && ack["replayed"].as_i64() == Some(40);
    let refused = ack["joined"] == false && ack["code"] == "slow_consumer";
    assert!(
        replayed_all || refused,
        "a join must replay everything missed or refuse: {ack}"
    );
    assert!(refused, "40 events cannot fit a buffer of 8: {ack}");
    assert!(
        late.next_kind("disconnect", Duration::from_secs(20))
            .await
            .is_some(),
        "the socket is cut off so it reconnects"
    );
}
