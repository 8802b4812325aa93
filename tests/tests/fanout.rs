//! The fan-out with the real npm socket.io-client: in-order, gap-free delivery while workers
//! race; replicas; a replica killed mid-stream and its clients resuming on another; removal;
//! the original's socket events; typing and presence.

use std::time::Duration;

use allo_e2e::{Stack, StackOptions};
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

/// Two messages workers race on one conversation; every client gets seq 2..=201 in order.
#[tokio::test(flavor = "multi_thread")]
async fn delivery_is_in_order_and_gap_free_while_workers_race() {
    let stack = Stack::start(StackOptions {
        workers: 2,
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
    assert_eq!(ack["code"], "not_participant");
}

/// The original's client events drive a conversation with no HTTP at all; acks carry the
/// commandId; bad input is refused in the ack, naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn the_original_socket_events_drive_a_conversation() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut alice = stack.socket("alice").await;
    let mut bob = stack.socket("bob").await;
    let ack = alice
        .emit(
            "createConversation",
            json!({"participants": ["bob"], "type": "group", "topic": "sockets only"}),
        )
        .await;
    assert!(ack["commandId"].is_string(), "{ack}");
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
        .emit(
            "sendMessage",
            json!({"conversationID": conv, "message": "over the socket"}),
        )
        .await;
    let m = send["messageId"].as_str().unwrap().to_string();
    assert!(send["commandId"].is_string());
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
    assert!(bob.emit("reactionMessage", r(json!({"emoji": "👍"}))).await["commandId"].is_string());
    assert_eq!(
        alice.event_about("messageReaction", &m).await["userID"],
        "bob"
    );
    alice
        .emit(
            "editMessage",
            r(json!({"newMessage": "edited over the socket"})),
        )
        .await;
    assert_eq!(
        bob.event_about("messageEdited", &m).await["newMessage"],
        "edited over the socket"
    );
    bob.emit("pinMessage", r(json!({"pin": true}))).await;
    alice.event_about("messagePinned", &m).await;
    bob.emit("messageRead", r(json!({}))).await;
    alice.event_about("messageStatusUpdate", &m).await;
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
        let ack = alice.emit(event, body).await;
        assert!(ack["commandId"].is_string(), "{event}: {ack}");
        let got = bob.next_named("message", Duration::from_secs(10)).await;
        assert!(got.is_some(), "{event}: no message event");
        if event == "createPoll" {
            let poll = got.unwrap()["messageId"].as_str().unwrap().to_string();
            bob.emit(
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
        .emit(
            "forwardMessage",
            json!({"fromConversationID": conv, "toConversationID": other, "messageId": m}),
        )
        .await;
    assert!(
        bob.next_named("messageForwarded", Duration::from_secs(10))
            .await
            .is_some()
    );
    bob.emit("reportMessage", r(json!({"reason": "spam"})))
        .await;
    let own = alice
        .emit(
            "sendMessage",
            json!({"conversationID": conv, "message": "oops"}),
        )
        .await;
    let oops = own["messageId"].as_str().unwrap().to_string();
    bob.event_about("message", &oops).await;
    alice
        .emit(
            "unsendMessage",
            json!({"conversationID": conv, "messageId": oops}),
        )
        .await;
    bob.event_about("messageUnsent", &oops).await;
    alice.emit("deleteMessage", r(json!({}))).await;
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
    alice
        .emit("typing", json!({"conversationID": conv, "typing": true}))
        .await;
    alice
        .emit("typing", json!({"conversationID": conv, "typing": true}))
        .await;
    let typing = bob
        .next_named("typing", Duration::from_secs(5))
        .await
        .expect("typing relayed");
    assert_eq!(
        (typing["userID"].as_str(), typing["typing"].as_bool()),
        (Some("alice"), Some(true))
    );
    assert!(
        bob.next_named("typing", Duration::from_millis(400))
            .await
            .is_none(),
        "not rate-limited"
    );
    assert!(
        alice
            .next_named("typing", Duration::from_millis(200))
            .await
            .is_none(),
        "echoed to the typist"
    );
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
