//! The fan-out under abuse (issue 11), with the real npm socket.io-client: a conversation whose
//! feed is stuck delays no other conversation; a resuming socket's replay does not hold up the
//! room; a user removed as they join receives nothing; `presence` answers members only; the
//! per-client bounds refuse with a clear code; a feed holds a bounded number of early events
//! while the log does not answer.
//!
//! "Stuck" is made real without slowing anything else: the test holds `LOCK TABLE events IN
//! ACCESS EXCLUSIVE MODE` in its own database, so every read of the event log (a gap fill, a
//! replay) waits, while membership checks (which never read events) and live delivery (which
//! needs no log) go on. Events are injected on NATS (and in the log) as a worker would publish
//! them, with no worker running.

use std::time::{Duration, Instant};

use allo_common::event::EventType;
use allo_e2e::infra::OwnPostgres;
use allo_e2e::{SocketClient, Stack, StackOptions};
use serde_json::{Value, json};

/// An event envelope of `conv` at `seq`, as a worker would publish it.
fn envelope(conv: &str, seq: i64, kind: EventType, data: Value) -> Value {
    json!({
        "eventId": uuid::Uuid::now_v7(),
        "type": kind.as_str(),
        "conversationID": conv,
        "seq": seq,
        "commandId": uuid::Uuid::now_v7(),
        "actor": "alice",
        "at": chrono::Utc::now(),
        "data": data,
    })
}

fn message(conv: &str, seq: i64) -> Value {
    envelope(
        conv,
        seq,
        EventType::Message,
        json!({"messageId": uuid::Uuid::now_v7(), "userID": "alice", "conversationID": conv, "message": format!("injected {seq}")}),
    )
}

/// Publishes an event on the conversation's subject, as a worker (or the relay) would.
async fn publish(stack: &Stack, event: &Value) {
    let subjects = allo_common::subjects::Subjects::of(&stack.settings);
    let conv = allo_common::ids::ConversationId::parse(event["conversationID"].as_str().unwrap())
        .expect("conversation id");
    let kind: EventType = serde_json::from_value(event["type"].clone()).expect("event type");
    stack
        .nats
        .publish(subjects.event(conv, kind), event.to_string().into())
        .await
        .expect("publish");
    stack.nats.flush().await.expect("flush");
}

/// Writes a message event into the log (marked published) and moves the conversation's
/// last seq, as a committing worker would.
async fn log(stack: &Stack, event: &Value) {
    let conv: uuid::Uuid = event["conversationID"].as_str().unwrap().parse().unwrap();
    let seq = event["seq"].as_i64().unwrap();
    sqlx::query(
        "INSERT INTO events (id, conversation_id, seq, type, command_id, actor_id, at, data)
         VALUES ($1, $2, $3, 'message', $4, 'alice', now(), $5)",
    )
    .bind(uuid::Uuid::parse_str(event["eventId"].as_str().unwrap()).unwrap())
    .bind(conv)
    .bind(seq)
    .bind(uuid::Uuid::parse_str(event["commandId"].as_str().unwrap()).unwrap())
    .bind(&event["data"])
    .execute(&stack.db)
    .await
    .expect("event row");
    sqlx::query("UPDATE conversations SET last_seq = greatest(last_seq, $2) WHERE id = $1")
        .bind(conv)
        .bind(seq)
        .execute(&stack.db)
        .await
        .expect("last_seq");
}

/// Holds the event log locked until the transaction is dropped: every read of it waits.
async fn lock_event_log(stack: &Stack) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = stack.db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock events");
    tx
}

/// The seqs of `conv`'s events a socket received, in arrival order.
fn seqs_of(socket: &SocketClient, conv: &str) -> Vec<i64> {
    socket
        .seen()
        .iter()
        .filter(|l| l["data"]["conversationID"] == conv)
        .filter_map(|l| l["data"]["seq"].as_i64())
        .collect()
}

/// Conversation A's feed is stuck (its gap fill waits on the log) and a flood of joins fills
/// its queue; in the same process, a join, a leave and a delivery in conversation B are as
/// quick as ever, and the flood is refused with `busy` + `retryAfter` instead of queued.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_feed_delays_no_other_conversation() {
    let mut stack = Stack::start(StackOptions {
        env: vec![
            ("ALLO_LIMITS__FANOUT__FEED_QUEUE".into(), "8".into()),
            (
                "ALLO_LIMITS__FANOUT__JOINS_PER_WINDOW".into(),
                "1000".into(),
            ),
        ],
        ..Default::default()
    })
    .await;
    let a = stack
        .create_conversation("alice", "group", &["mallory"])
        .await;
    let b = stack.create_conversation("bob", "group", &["carol"]).await;
    stack.kill("worker-0").await;
    let mut alice = stack.socket("alice").await;
    alice.join(&a).await;
    let mut bob = stack.socket("bob").await;
    bob.join(&b).await;

    let lock = lock_event_log(&stack).await;
    // A gap in A (2 never arrives): after the reorder window A's feed reads the log and waits.
    publish(&stack, &message(&a, 3)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut mallory = stack.socket("mallory").await;
    for _ in 0..40 {
        mallory
            .send("joinConversation", json!({"conversationID": a}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut carol = stack.socket("carol").await;
    let started = Instant::now();
    let ack = carol
        .emit("joinConversation", json!({"conversationID": b}))
        .await;
    assert_eq!(ack["joined"], true, "{ack}");
    let left = bob
        .emit("leaveConversation", json!({"conversationID": b}))
        .await;
    assert_eq!(left["left"], true, "{left}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "join and leave in B took {:?} while A was stuck",
        started.elapsed()
    );
    let sent = Instant::now();
    publish(&stack, &message(&b, 2)).await;
    let got = carol
        .next_named("message", Duration::from_secs(2))
        .await
        .expect("B's message delivered while A is stuck");
    assert_eq!(got["seq"], 2);
    assert!(sent.elapsed() < Duration::from_secs(2));
    assert!(
        bob.next_named("message", Duration::from_millis(300))
            .await
            .is_none(),
        "bob left B"
    );
    let refused = mallory
        .next_matching("error", |e| e["code"] == "busy", Duration::from_secs(5))
        .await
        .expect("a flood on a stuck feed is refused with busy");
    assert_eq!(refused["event"], "joinConversation");
    assert!(
        refused["retryAfter"].as_u64().is_some_and(|s| s >= 1),
        "{refused}"
    );
    drop(lock);
}

/// A socket resuming from `lastSeq: 0` while the log is slow: the other members keep getting
/// live events at once (the replay is read outside the feed), and the resuming socket gets
/// every seq once, in order, across the seam between its replay and the live events.
#[tokio::test(flavor = "multi_thread")]
async fn a_resuming_join_does_not_hold_up_the_room() {
    let mut stack = Stack::start(StackOptions::default()).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "dave"])
        .await;
    for i in 0..5 {
        stack
            .act(
                "alice",
                "sendMessage",
                json!({"conversationID": conv, "message": format!("m{i}")}),
            )
            .await;
    }
    stack
        .wait_count(
            "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM event_outbox o WHERE o.event_id = e.id)",
            6,
            Duration::from_secs(10),
        )
        .await;
    stack.kill("worker-0").await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;

    let lock = lock_event_log(&stack).await;
    let mut dave = stack.socket("dave").await;
    let join = dave
        .send(
            "joinConversation",
            json!({"conversationID": conv, "lastSeq": 0}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    publish(&stack, &message(&conv, 7)).await;
    let live = bob
        .next_named("message", Duration::from_secs(2))
        .await
        .expect("the room got its live event while a replay waited on the log");
    assert_eq!(live["seq"], 7);
    assert!(sent.elapsed() < Duration::from_secs(2));
    drop(lock);

    let ack = dave
        .next_kind("ack", Duration::from_secs(10))
        .await
        .expect("dave's join answered");
    assert_eq!(ack["id"], join);
    let ack = &ack["data"];
    assert_eq!(
        (&ack["joined"], &ack["recovered"], &ack["lastSeq"]),
        (&json!(true), &json!(true), &json!(7)),
        "{ack}"
    );
    dave.collect("message", 6, Duration::from_secs(5)).await;
    assert_eq!(seqs_of(&dave, &conv), (1..=7).collect::<Vec<_>>());
}

/// `participantRemoved` is committed and delivered after the socket handler checked
/// membership (here: published while Postgres still lists bob): the feed, at its own seq,
/// refuses bob's join, and bob never gets the conversation's later messages.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_removed_as_they_join_never_receives_later_messages() {
    let mut stack = Stack::start(StackOptions::default()).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol"])
        .await;
    stack.kill("worker-0").await;
    let mut carol = stack.socket("carol").await;
    carol.join(&conv).await;
    let removal = envelope(
        &conv,
        2,
        EventType::ParticipantRemoved,
        json!({"conversationID": conv, "userID": "bob", "removedBy": "alice"}),
    );
    publish(&stack, &removal).await;
    carol
        .next_named("participantRemoved", Duration::from_secs(5))
        .await
        .expect("the feed delivered the removal");

    let mut bob = stack.socket("bob").await;
    let ack = bob
        .emit("joinConversation", json!({"conversationID": conv}))
        .await;
    assert_eq!(
        (&ack["joined"], &ack["code"]),
        (&json!(false), &json!("not_participant")),
        "{ack}"
    );
    publish(&stack, &message(&conv, 3)).await;
    assert_eq!(
        carol
            .next_named("message", Duration::from_secs(5))
            .await
            .expect("carol gets 3")["seq"],
        3
    );
    assert!(
        bob.next_named("message", Duration::from_millis(1500))
            .await
            .is_none(),
        "a removed user received a later message"
    );
}

/// `presence` answers only a socket whose user is (still) a member that joined: a user
/// removed after joining and a user who never was a member are refused.
#[tokio::test(flavor = "multi_thread")]
async fn presence_answers_members_only() {
    let stack = Stack::start(StackOptions::default()).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol"])
        .await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    let mut carol = stack.socket("carol").await;
    carol.join(&conv).await;
    let ask = json!({"conversationID": conv});
    let online = bob.emit("presence", ask.clone()).await;
    assert_eq!(online["online"], json!(["bob", "carol"]), "{online}");

    stack
        .act(
            "alice",
            "removeParticipant",
            json!({"conversationID": conv, "participantID": "bob"}),
        )
        .await;
    bob.next_named("participantRemoved", Duration::from_secs(10))
        .await
        .expect("bob told of his removal");
    let refused = bob.emit("presence", ask.clone()).await;
    assert_eq!(refused["code"], "not_joined", "{refused}");
    assert!(refused.get("online").is_none(), "{refused}");

    let mut mallory = stack.socket("mallory").await;
    let refused = mallory.emit("presence", ask.clone()).await;
    assert_eq!(refused["code"], "not_joined", "{refused}");
    assert!(refused.get("online").is_none(), "{refused}");

    let online = carol.emit("presence", ask).await;
    assert_eq!(online["online"], json!(["carol"]), "{online}");
}

/// The per-client bounds of `limits.fanout`, each refused with its own code (and
/// `retryAfter` where waiting helps), each freed again when the client lets go.
#[tokio::test(flavor = "multi_thread")]
async fn the_fanout_bounds_sockets_joins_and_presence() {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("ALLO_LIMITS__FANOUT__SOCKETS_PER_USER".into(), "2".into()),
            ("ALLO_LIMITS__FANOUT__JOINED_PER_SOCKET".into(), "2".into()),
            ("ALLO_LIMITS__FANOUT__JOINS_PER_WINDOW".into(), "4".into()),
            (
                "ALLO_LIMITS__FANOUT__PRESENCE_PER_WINDOW".into(),
                "2".into(),
            ),
            ("ALLO_LIMITS__FANOUT__WINDOW_SECS".into(), "60".into()),
        ],
        ..Default::default()
    })
    .await;
    let convs = [
        stack.create_conversation("alice", "group", &["bob"]).await,
        stack.create_conversation("alice", "group", &["bob"]).await,
        stack.create_conversation("alice", "group", &["bob"]).await,
    ];

    // Sockets per user: the third is refused at the handshake, and admitted once one closes.
    let mut first = stack.socket("alice").await;
    let second = stack.socket("alice").await;
    let token = stack.token("alice");
    let refused = SocketClient::connect(&stack.fanout_url, &token)
        .await
        .err()
        .expect("a third socket is refused");
    assert!(refused.starts_with("too_many_sockets"), "{refused}");
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while SocketClient::connect(&stack.fanout_url, &token)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "a closed socket's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Conversations per socket: the third join is refused until the socket leaves one.
    first.join(&convs[0]).await;
    first.join(&convs[1]).await;
    let ack = first
        .emit("joinConversation", json!({"conversationID": convs[2]}))
        .await;
    assert_eq!(
        (&ack["joined"], &ack["code"]),
        (&json!(false), &json!("too_many_joined")),
        "{ack}"
    );
    first
        .emit("leaveConversation", json!({"conversationID": convs[0]}))
        .await;
    first.join(&convs[2]).await;

    // Joins per user per window (4; alice used them above): the fifth is refused with a hint,
    // even a rejoin of a conversation the socket holds (no other bound applies to it).
    let ack = first
        .emit("joinConversation", json!({"conversationID": convs[1]}))
        .await;
    assert_eq!(
        (&ack["joined"], &ack["code"]),
        (&json!(false), &json!("rate_limited")),
        "{ack}"
    );
    assert!(
        ack["retryAfter"]
            .as_u64()
            .is_some_and(|s| (1..=60).contains(&s)),
        "{ack}"
    );

    // Presence requests per user per window (2).
    let ask = json!({"conversationID": convs[1]});
    for _ in 0..2 {
        let online = first.emit("presence", ask.clone()).await;
        assert!(online["online"].is_array(), "{online}");
    }
    let limited = first.emit("presence", ask).await;
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert!(
        limited["retryAfter"]
            .as_u64()
            .is_some_and(|s| (1..=60).contains(&s)),
        "{limited}"
    );
}

/// While the event log does not answer (Postgres down) a feed holds at most
/// `feed_pending_max` early events; past it later events are not held, and once Postgres is
/// back the log serves them: the socket still gets every seq once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_feed_holds_a_bounded_number_of_early_events_while_postgres_is_down() {
    let postgres = OwnPostgres::start().await;
    let mut stack = Stack::start(StackOptions {
        admin_database_url: Some(postgres.admin_url()),
        env: vec![("ALLO_LIMITS__FANOUT__FEED_PENDING_MAX".into(), "5".into())],
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    stack.kill("worker-0").await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    let events: Vec<Value> = (2..=22).map(|seq| message(&conv, seq)).collect();
    for event in &events {
        log(&stack, event).await;
    }
    postgres.stop().await;
    // 2 is lost on the way; 3..=22 arrive while the log cannot fill the gap.
    for event in &events[1..] {
        publish(&stack, event).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dropped = stack
        .fanout_counter(&stack.fanout_url, "allo_feed_pending_dropped_total", &[])
        .await;
    assert!(dropped >= 1.0, "the feed held every early event (no bound)");
    postgres.resume().await;
    let got = bob.collect("message", 21, Duration::from_secs(30)).await;
    let seqs: Vec<i64> = got.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert_eq!(seqs, (2..=22).collect::<Vec<_>>());
}
