//! The spine, end to end: HTTP ingress → JetStream → messages worker → Postgres → event
//! stream → Socket.IO fan-out → the npm socket.io-client. Real processes, real NATS, real
//! Postgres; every test has its own database and subject prefix.

use std::collections::BTreeSet;
use std::time::Duration;

use allo_common::command::CommandEnvelope;
use allo_common::ops::Pool;
use allo_common::partition::RouteHash;
use allo_e2e::{SocketClient, Stack, StackOptions, id};
use futures::StreamExt;
use serde_json::json;

const EVENT_WAIT: Duration = Duration::from_secs(10);

/// The README's walkthrough: create, join with a real client, send, receive with seq.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_travels_from_http_to_a_real_socket_io_client() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut bob = stack.socket("bob").await;

    let created = stack
        .post_wait(
            &stack.token("alice"),
            "createConversation",
            json!({"participants": ["bob"], "type": "group", "topic": "Lunch"}),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let conversation = created.body["conversationID"].as_str().unwrap().to_string();
    assert_eq!(
        created.body["result"]["participants"],
        json!(["alice", "bob"])
    );
    assert_eq!(created.body["result"]["owner"], "alice");

    // Bob's socket hears of the conversation without joining it (user room).
    let announced = bob
        .next_named("conversationCreated", EVENT_WAIT)
        .await
        .expect("conversationCreated");
    assert_eq!(announced["conversationID"], conversation.as_str());
    assert_eq!(announced["seq"], 1);
    assert_eq!(announced["topic"], "Lunch");

    bob.join(&conversation).await;
    let sent = stack
        .post(
            &stack.token("alice"),
            "sendMessage",
            json!({"userID": "alice", "conversationID": conversation, "message": "hi bob"}),
        )
        .await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    assert_eq!(sent.body["status"], "accepted");
    let command_id = sent.body["commandId"].as_str().unwrap();
    let message_id = sent.body["messageId"].as_str().unwrap();
    assert_eq!(
        sent.headers["location"],
        format!("/api/commands/{command_id}").as_str()
    );

    let event = bob
        .next_named("message", EVENT_WAIT)
        .await
        .expect("message event");
    assert_eq!(event["message"], "hi bob");
    assert_eq!(event["userID"], "alice");
    assert_eq!(event["conversationID"], conversation.as_str());
    assert_eq!(event["messageId"], message_id);
    assert_eq!(event["seq"], 2);
    assert!(event["eventId"].as_str().is_some_and(|id| !id.is_empty()));

    let outcome = stack.outcome(&stack.token("alice"), command_id).await;
    assert_eq!(outcome["status"], "committed");
    assert_eq!(outcome["result"]["seq"], 2);

    // Reads: history and the conversation list (with bob's unread count).
    let history = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{conversation}/messages"),
        )
        .await;
    assert_eq!(history.status, 200);
    assert_eq!(history.body["messages"][0]["message"], "hi bob");
    assert_eq!(history.body["messages"][0]["seq"], 2);
    let list = stack
        .get(Some(&stack.token("bob")), "/api/conversations")
        .await;
    assert_eq!(list.body[0]["conversationID"], conversation.as_str());
    assert_eq!(list.body[0]["unreadCount"], 1);
    assert_eq!(list.body[0]["lastMessage"]["message"], "hi bob");
    let one = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{conversation}"),
        )
        .await;
    assert_eq!(one.body["admins"], json!(["alice"]));
    assert_eq!(one.body["participants"].as_array().map(Vec::len), Some(2));
}

/// Only workers create the pools' consumers: a command the API accepts before any worker has
/// ever started waits in the work-queue stream and is applied once the first worker comes up.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_accepted_before_any_worker_started_is_applied_by_the_first_one() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        ..Default::default()
    })
    .await;
    let token = stack.token("alice");
    let reply = stack
        .post(
            &token,
            "createConversation",
            json!({"participants": ["bob"], "type": "group", "topic": "early"}),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let command_id = id(&reply.body, "commandId");
    let conversation = id(&reply.body, "conversationID");
    stack.start_worker().await;
    let outcome = stack.outcome(&token, &command_id).await;
    assert_eq!(outcome["status"], "committed", "{outcome}");
    let read = stack
        .get(Some(&token), &format!("/api/conversations/{conversation}"))
        .await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.body["topic"], "early");
}

/// Every class of bad input gets problem+json naming the field, and nothing reaches the
/// broker or the database. No worker runs at first, so the stream's sequence counts anything
/// published; a worker started at the end would store it.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_nothing_is_published_or_stored() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        ..Default::default()
    })
    .await;
    // The API provisions the streams itself when it starts.
    let token = stack.token("alice");
    let conv = uuid::Uuid::now_v7().to_string();
    let long = "x".repeat(4097);
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("sendMessage", "{not json".into(), 400, Some("body")),
        ("sendMessage", "[1, 2]".into(), 400, Some("body")),
        ("sendMessage", "".into(), 400, Some("body")),
        (
            "sendMessage",
            json!({"conversationID": conv}).to_string(),
            422,
            Some("message"),
        ),
        (
            "sendMessage",
            json!({"conversationID": conv, "message": 42}).to_string(),
            422,
            Some("message"),
        ),
        (
            "sendMessage",
            json!({"conversationID": conv, "message": "   "}).to_string(),
            422,
            Some("message"),
        ),
        (
            "sendMessage",
            json!({"conversationID": conv, "message": long}).to_string(),
            422,
            Some("message"),
        ),
        (
            "sendMessage",
            json!({"conversationID": conv, "message": "a\u{0}b"}).to_string(),
            422,
            Some("message"),
        ),
        (
            "sendMessage",
            json!({"conversationID": "not-a-uuid", "message": "hi"}).to_string(),
            422,
            Some("conversationID"),
        ),
        (
            "sendMessage",
            json!({"conversationID": conv, "message": "hi", "userID": "mallory"}).to_string(),
            403,
            Some("userID"),
        ),
        (
            "joinConversation",
            json!({"conversationID": 7}).to_string(),
            422,
            Some("conversationID"),
        ),
        (
            "joinConversation",
            json!({}).to_string(),
            422,
            Some("conversationID"),
        ),
        (
            "createConversation",
            json!({"participants": ["bob"], "type": "party"}).to_string(),
            422,
            Some("type"),
        ),
        (
            "createConversation",
            json!({"participants": "bob", "type": "group"}).to_string(),
            422,
            Some("participants"),
        ),
        (
            "createConversation",
            json!({"participants": ["bob", "carol"], "type": "direct"}).to_string(),
            422,
            Some("participants"),
        ),
        (
            "createConversation",
            json!({"participants": ["bob", "two words"], "type": "group"}).to_string(),
            422,
            Some("participants[1]"),
        ),
        (
            "createConversation",
            json!({"participants": ["bob"], "type": "group", "topic": "t".repeat(201)}).to_string(),
            422,
            Some("topic"),
        ),
        (
            "createConversation",
            json!({"participants": ["bob"], "type": "group", "owner": "mallory"}).to_string(),
            403,
            Some("owner"),
        ),
        ("deleteEverything", json!({}).to_string(), 404, None),
        (
            "sendMessage",
            format!(
                "{{\"conversationID\":\"{conv}\",\"message\":\"{}\"}}",
                "y".repeat(70_000)
            ),
            413,
            Some("body"),
        ),
    ];
    for (op, body, status, field) in &cases {
        let reply = stack.post_raw(Some(&token), op, body.clone(), &[]).await;
        assert_eq!(
            reply.status,
            *status,
            "{op} {}: {:?}",
            &body[..body.len().min(80)],
            reply.body
        );
        assert_eq!(reply.content_type(), "application/problem+json", "{op}");
        assert_eq!(reply.body["status"], *status);
        assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        if let Some(field) = field {
            assert_eq!(reply.body["field"], *field, "{op} {body:.80}");
        }
    }
    // Bad headers and parameters, on an otherwise valid request.
    let valid = json!({"conversationID": conv, "message": "hi"}).to_string();
    let reply = stack
        .post_raw(
            Some(&token),
            "sendMessage",
            valid.clone(),
            &[("idempotency-key", "has spaces")],
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["field"].as_str()),
        (422, Some("Idempotency-Key"))
    );
    let reply = stack
        .post_raw(
            Some(&token),
            "sendMessage",
            valid,
            &[("prefer", "wait=soon")],
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["field"].as_str()),
        (422, Some("wait"))
    );
    for (path, field) in [
        (
            format!("/api/conversations/{conv}/messages?limit=0"),
            "limit",
        ),
        (
            format!("/api/conversations/{conv}/messages?before=5&after=1"),
            "before",
        ),
        ("/api/conversations/nope/messages".to_string(), "id"),
        ("/api/commands/nope".to_string(), "id"),
    ] {
        let reply = stack.get(Some(&token), &path).await;
        assert_eq!(
            (reply.status, reply.body["field"].as_str()),
            (422, Some(field)),
            "{path}"
        );
    }

    assert_eq!(
        stack.commands_published().await,
        0,
        "a refused request reached the broker"
    );
    // A worker now drains whatever the stream holds; one valid command shows it would have
    // stored anything a refused request had slipped in.
    let mut stack = stack;
    stack.start_worker().await;
    stack.create_conversation("alice", "group", &["bob"]).await;
    assert_eq!(stack.commands_published().await, 1);
    assert_eq!(stack.pending_commands().await, 0);
    assert_eq!(stack.count("SELECT count(*) FROM commands").await, 1);
    assert_eq!(stack.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(stack.count("SELECT count(*) FROM messages").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_expired_and_forged_tokens_get_401() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let alice = allo_common::ids::UserId::parse("alice").unwrap();
    let expired = stack
        .keys()
        .mint(&alice, &[], chrono::Duration::minutes(-5))
        .expect("mint");
    let forged = allo_common::auth::TokenKeys::from_secret("not-the-server-secret-at-all")
        .mint(&alice, &[], chrono::Duration::hours(1))
        .expect("mint");
    let body = json!({"participants": ["bob"], "type": "group"}).to_string();
    for token in [
        None,
        Some(expired.as_str()),
        Some(forged.as_str()),
        Some("garbage"),
    ] {
        let reply = stack
            .post_raw(token, "createConversation", body.clone(), &[])
            .await;
        assert_eq!(reply.status, 401, "{token:?}");
        assert_eq!(reply.content_type(), "application/problem+json");
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
        assert_eq!(stack.get(token, "/api/conversations").await.status, 401);
        let refused = SocketClient::connect(&stack.fanout_url, token.unwrap_or("")).await;
        assert!(refused.is_err(), "socket accepted token {token:?}");
    }
    assert_eq!(stack.commands_published().await, 0);
}

/// Authorization is the worker's, against Postgres: a stranger's send is rejected with a
/// reason readable three ways (wait, command status, socket `error`); reads and socket joins
/// are refused; groups refuse self-joins, channels admit them.
#[tokio::test(flavor = "multi_thread")]
async fn only_participants_act_read_and_listen() {
    let stack = Stack::start(StackOptions::default()).await;
    let group = stack.create_conversation("alice", "group", &["bob"]).await;
    let channel = stack.create_conversation("alice", "channel", &[]).await;
    let carol = stack.token("carol");
    let mut carol_socket = stack.socket("carol").await;

    let reply = stack
        .post_wait(
            &carol,
            "sendMessage",
            json!({"conversationID": group, "message": "let me in"}),
        )
        .await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    assert_eq!(reply.body["code"], "not_participant");
    let command_id = reply.body["commandId"].as_str().unwrap().to_string();
    let status = stack
        .get(Some(&carol), &format!("/api/commands/{command_id}"))
        .await;
    assert_eq!(status.body["status"], "rejected");
    assert_eq!(status.body["code"], "not_participant");
    let error = carol_socket
        .next_named("error", EVENT_WAIT)
        .await
        .expect("error event to the actor");
    assert_eq!(error["commandId"], command_id.as_str());
    assert_eq!(error["code"], "not_participant");
    // Someone else's command is not there for alice to read.
    allo_e2e::assert_problem(
        stack
            .get(
                Some(&stack.token("alice")),
                &format!("/api/commands/{command_id}"),
            )
            .await,
        404,
    );

    allo_e2e::assert_problem(
        stack
            .get(
                Some(&carol),
                &format!("/api/conversations/{group}/messages"),
            )
            .await,
        403,
    );
    allo_e2e::assert_problem(
        stack
            .get(Some(&carol), &format!("/api/conversations/{group}"))
            .await,
        403,
    );
    let missing = uuid::Uuid::now_v7();
    allo_e2e::assert_problem(
        stack
            .get(Some(&carol), &format!("/api/conversations/{missing}"))
            .await,
        404,
    );
    let ack = carol_socket
        .emit("joinConversation", json!({"conversationID": group}))
        .await;
    assert_eq!(ack["joined"], false);
    assert_eq!(ack["code"], "not_participant");
    assert!(carol_socket.next_named("error", EVENT_WAIT).await.is_some());

    let reply = stack
        .post_wait(&carol, "joinConversation", json!({"conversationID": group}))
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (403, Some("forbidden"))
    );
    let reply = stack
        .post_wait(
            &carol,
            "joinConversation",
            json!({"conversationID": missing}),
        )
        .await;
    assert_eq!(
        (reply.status, reply.body["code"].as_str()),
        (404, Some("not_found"))
    );

    let mut alice_socket = stack.socket("alice").await;
    alice_socket.join(&channel).await;
    let reply = stack
        .post_wait(
            &carol,
            "joinConversation",
            json!({"conversationID": channel}),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let joined = alice_socket
        .next_named("participantJoined", EVENT_WAIT)
        .await
        .expect("participantJoined");
    assert_eq!(joined["userID"], "carol");
    carol_socket.join(&channel).await;
    let reply = stack
        .post_wait(
            &carol,
            "sendMessage",
            json!({"conversationID": channel, "message": "hello channel"}),
        )
        .await;
    assert_eq!(reply.status, 201);

    // A direct conversation is not duplicated.
    stack.create_conversation("alice", "direct", &["bob"]).await;
    let again = stack
        .post_wait(
            &stack.token("bob"),
            "createConversation",
            json!({"participants": ["alice"], "type": "direct"}),
        )
        .await;
    assert_eq!(
        (again.status, again.body["code"].as_str()),
        (409, Some("conflict"))
    );
}

/// The same Idempotency-Key from the same user is the same command: same ids, one message; the
/// same key with another body is refused with 422 `idempotency_key_reused`.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_request_creates_nothing_twice() {
    let stack = Stack::start(StackOptions {
        fanout: false,
        ..Default::default()
    })
    .await;
    let conversation = stack.create_conversation("alice", "group", &["bob"]).await;
    let body = json!({"conversationID": conversation, "message": "exactly once"}).to_string();
    let alice = stack.token("alice");
    let key = [("idempotency-key", "send-42")];
    let first = stack
        .post_raw(Some(&alice), "sendMessage", body.clone(), &key)
        .await;
    let second = stack
        .post_raw(Some(&alice), "sendMessage", body.clone(), &key)
        .await;
    assert_eq!(first.status, 202);
    assert_eq!(second.status, 202);
    assert_eq!(first.body["commandId"], second.body["commandId"]);
    assert_eq!(first.body["messageId"], second.body["messageId"]);
    stack
        .outcome(&alice, first.body["commandId"].as_str().unwrap())
        .await;
    // A retry after the commit answers with the stored outcome.
    let third = stack
        .post_raw(
            Some(&alice),
            "sendMessage",
            body.clone(),
            &[key[0], ("prefer", "wait=5")],
        )
        .await;
    assert_eq!(third.status, 201, "{:?}", third.body);
    assert_eq!(third.body["commandId"], first.body["commandId"]);
    assert_eq!(third.body["result"]["messageId"], first.body["messageId"]);
    // Another key, or the same key from another user, is another command.
    let other = stack
        .post_raw(
            Some(&alice),
            "sendMessage",
            body.clone(),
            &[("idempotency-key", "send-43")],
        )
        .await;
    assert_ne!(other.body["commandId"], first.body["commandId"]);
    let bobs = stack
        .post_raw(Some(&stack.token("bob")), "sendMessage", body.clone(), &key)
        .await;
    assert_ne!(bobs.body["commandId"], first.body["commandId"]);
    stack
        .outcome(&alice, other.body["commandId"].as_str().unwrap())
        .await;
    stack
        .outcome(
            &stack.token("bob"),
            bobs.body["commandId"].as_str().unwrap(),
        )
        .await;

    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT body, count(*) FROM messages GROUP BY body")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    assert_eq!(rows, vec![("exactly once".to_string(), 3)]);

    // The same key with the same JSON in another spelling is still the same request.
    let respelled =
        format!("{{ \"message\":\"exactly once\",  \"conversationID\":\"{conversation}\" }}");
    let again = stack
        .post_raw(Some(&alice), "sendMessage", respelled, &key)
        .await;
    assert_eq!(again.status, 202, "{:?}", again.body);
    assert_eq!(again.body["commandId"], first.body["commandId"]);
    // The same key with another body is refused, not answered with the first command; also
    // after an API restart (the key's fingerprint is kept in JetStream, not in the process).
    let mut stack = stack;
    let published = stack.commands_published().await;
    for restart in [false, true] {
        if restart {
            assert!(stack.terminate("api").await, "api did not stop cleanly");
            stack.start_api().await;
        }
        let other_body =
            json!({"conversationID": conversation, "message": "something else"}).to_string();
        let reused = stack
            .post_raw(Some(&alice), "sendMessage", other_body, &key)
            .await;
        let reused = allo_e2e::assert_problem(reused, 422);
        assert_eq!(
            (reused.body["code"].as_str(), reused.body["field"].as_str()),
            (Some("idempotency_key_reused"), Some("Idempotency-Key")),
            "{:?}",
            reused.body
        );
        assert!(reused.body.get("commandId").is_none());
        let other_op = stack
            .post_raw(
                Some(&alice),
                "editMessage",
                json!({"conversationID": conversation, "messageId": first.body["messageId"], "newMessage": "x"})
                    .to_string(),
                &key,
            )
            .await;
        assert_eq!(
            allo_e2e::assert_problem(other_op, 422).body["code"],
            "idempotency_key_reused"
        );
    }
    assert_eq!(
        stack.commands_published().await,
        published,
        "a reused key published a command"
    );
    let replay = stack
        .post_raw(Some(&alice), "sendMessage", body.clone(), &key)
        .await;
    assert_eq!(
        replay.status, 202,
        "the first body is still welcome: {:?}",
        replay.body
    );
    assert_eq!(replay.body["commandId"], first.body["commandId"]);
    assert_eq!(
        stack
            .count("SELECT count(*) FROM events WHERE type = 'message'")
            .await,
        3
    );
}

/// A worker commits and dies before publishing or acking: the command comes back after
/// `ack_wait`, has no second effect, and the relay publishes the orphaned event once.
#[tokio::test(flavor = "multi_thread")]
async fn redelivery_after_a_crash_between_commit_and_ack_has_no_second_effect() {
    let mut stack = Stack::start(StackOptions {
        ack_wait_secs: 2,
        ..Default::default()
    })
    .await;
    let conversation = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conversation).await;
    stack.kill("worker-0").await;

    let sent = stack
        .post(
            &stack.token("alice"),
            "sendMessage",
            json!({"conversationID": conversation, "message": "once"}),
        )
        .await;
    assert_eq!(sent.status, 202);
    assert_eq!(stack.pending_commands().await, 1);

    // The "crashing" worker: the real apply path, then nothing (no publish, no ack).
    let js = async_nats::jetstream::new(stack.nats.clone());
    let subjects = allo_common::subjects::Subjects::of(&stack.settings);
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(subjects.command_stream())
        .await
        .unwrap()
        .get_consumer(
            &subjects.partition_consumer(
                Pool::Messages,
                RouteHash::of(&uuid::Uuid::parse_str(&conversation).unwrap())
                    .partition(subjects.partitions()),
            ),
        )
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let msg = batch.next().await.expect("a delivery").expect("a message");
    let envelope: CommandEnvelope = serde_json::from_slice(&msg.payload).unwrap();
    let worker = allo_workers::Worker::new(
        std::sync::Arc::new(stack.settings.clone()),
        stack.db.clone(),
        stack.nats.clone(),
    );
    let applied = worker.apply(&envelope).await.unwrap();
    assert!(
        matches!(applied, allo_workers::pool::Applied::Committed { .. }),
        "{applied:?}"
    );
    drop(batch);
    drop(msg);
    assert_eq!(
        stack
            .count("SELECT count(*) FROM event_outbox o JOIN events e ON e.id = o.event_id WHERE e.type = 'message'")
            .await,
        1
    );

    stack.start_worker().await;
    let event = bob
        .next_named("message", EVENT_WAIT)
        .await
        .expect("the relay publishes the committed event");
    assert_eq!(event["message"], "once");
    assert_eq!(event["seq"], 2);
    // The redelivered command is acked without effect.
    for _ in 0..100 {
        if stack.pending_commands().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stack.pending_commands().await,
        0,
        "redelivered command was not acked"
    );
    assert_eq!(stack.count("SELECT count(*) FROM messages").await, 1);
    assert_eq!(
        stack
            .count("SELECT count(*) FROM events WHERE type = 'message'")
            .await,
        1
    );
    assert_eq!(
        stack
            .count("SELECT last_seq FROM conversations WHERE kind = 'group'")
            .await,
        2
    );
    assert!(
        bob.next_named("message", Duration::from_secs(2))
            .await
            .is_none(),
        "event delivered twice"
    );
    let outcome = stack
        .outcome(
            &stack.token("alice"),
            sent.body["commandId"].as_str().unwrap(),
        )
        .await;
    assert_eq!(outcome["status"], "committed");
}

/// Five users send 40 messages each, all at once, through two worker processes that both
/// apply some of them: the conversation's seqs are exactly 1..=201, and a listening client gets
/// every message once. The processes do not split the partitions here, so both race on the
/// one conversation, as they briefly may during a hand-over (tests/scaling.rs).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_senders_through_two_workers_get_gap_free_seqs() {
    let stack = Stack::start(StackOptions {
        workers: 2,
        env: vec![("ALLO_WORKER__SPLIT_PARTITIONS".into(), "false".into())],
        ..Default::default()
    })
    .await;
    let users = ["u1", "u2", "u3", "u4", "u5"];
    let conversation = stack.create_conversation("alice", "group", &users).await;
    let mut listener = stack.socket("alice").await;
    listener.join(&conversation).await;

    let per_user = 40;
    let sends = users
        .iter()
        .flat_map(|user| (0..per_user).map(move |i| (*user, i)))
        .map(|(user, i)| {
            let stack = &stack;
            let conversation = conversation.clone();
            async move {
                let reply = stack
                    .post(
                        &stack.token(user),
                        "sendMessage",
                        json!({"conversationID": conversation, "message": format!("{user}-{i}")}),
                    )
                    .await;
                assert_eq!(reply.status, 202, "{:?}", reply.body);
            }
        });
    futures::stream::iter(sends)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;

    let total = users.len() * per_user;
    let events = listener
        .collect("message", total, Duration::from_secs(60))
        .await;
    let seqs: BTreeSet<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (2..=(total as i64 + 1)).collect(),
        "every seq once, no gaps"
    );
    let texts: BTreeSet<String> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), total);

    let log: Vec<(i64,)> = sqlx::query_as("SELECT seq FROM events ORDER BY seq")
        .fetch_all(&stack.db)
        .await
        .unwrap();
    let log: Vec<i64> = log.into_iter().map(|(s,)| s).collect();
    assert_eq!(log, (1..=(total as i64 + 1)).collect::<Vec<_>>());
    assert_eq!(
        stack.count("SELECT count(*) FROM messages").await,
        total as i64
    );
    let history = stack
        .get(
            Some(&stack.token("u3")),
            &format!("/api/conversations/{conversation}/messages?after=0&limit=100"),
        )
        .await;
    let page: Vec<i64> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(page, (2..=101).collect::<Vec<_>>());
    assert_eq!(history.body["next"], json!({"after": 101}));
    // Both processes took part, or this proved nothing about two workers racing.
    let (first, second) = (
        stack.committed_by("worker-0", "sendMessage").await,
        stack.committed_by("worker-1", "sendMessage").await,
    );
    assert!(
        first > 0 && second > 0,
        "one worker applied everything: {first} + {second}"
    );
    assert_eq!(first + second, total as u64);
    // And every command went through on its first delivery: racing on one conversation is
    // serialized by its row lock, not resolved by failures and redeliveries.
    for worker in ["worker-0", "worker-1"] {
        let log = stack.log(worker);
        assert!(
            !log.contains("command failed; will be redelivered"),
            "{worker} had to redeliver: {}",
            log.lines()
                .find(|l| l.contains("command failed"))
                .unwrap_or_default()
        );
    }
}

/// Streams and consumers are named from ALLO_SUBJECT_PREFIX, and provisioning twice (a second
/// process starting) changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn jetstream_is_provisioned_per_prefix_and_idempotently() {
    let mut stack = Stack::start(StackOptions {
        api: false,
        fanout: false,
        ..Default::default()
    })
    .await;
    stack.start_worker().await;
    let js = async_nats::jetstream::new(stack.nats.clone());
    let prefix = stack.settings.subject_prefix.to_uppercase();
    let mut commands = js
        .get_stream(format!("{prefix}_CMD"))
        .await
        .expect("command stream");
    let info = commands.info().await.unwrap();
    assert_eq!(
        info.config.retention,
        async_nats::jetstream::stream::RetentionPolicy::WorkQueue
    );
    assert_eq!(
        info.config.subjects,
        vec![format!("{}.cmd.>", stack.settings.subject_prefix)]
    );
    assert!(info.config.duplicate_window >= Duration::from_secs(60));
    let mut events = js
        .get_stream(format!("{prefix}_EVT"))
        .await
        .expect("event stream");
    assert_eq!(
        events.info().await.unwrap().config.retention,
        async_nats::jetstream::stream::RetentionPolicy::Limits
    );
    let subjects = allo_common::subjects::Subjects::of(&stack.settings);
    for pool in Pool::ALL {
        for partition in subjects.all_partitions() {
            let name = subjects.partition_consumer(pool, partition);
            let consumer = commands
                .consumer_info(&name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                consumer.config.ack_policy,
                async_nats::jetstream::consumer::AckPolicy::Explicit
            );
            assert_eq!(
                consumer.config.filter_subject,
                format!(
                    "{}.cmd.{}.{partition}.>",
                    stack.settings.subject_prefix,
                    pool.as_str()
                )
            );
            assert!(consumer.config.max_deliver > 0 && consumer.config.max_ack_pending > 0);
        }
    }
    assert!(
        stack.terminate("worker-0").await,
        "worker did not exit cleanly on SIGTERM"
    );
}

/// A command whose apply fails on every delivery (a trigger refuses its row) takes the real
/// path: the worker NAKs it with a delay, JetStream redelivers it, and after `max_deliver`
/// deliveries the worker dead-letters it and marks it rejected. An undecodable command is set
/// aside at once. Neither stays in the stream, and the conversation is not blocked.
#[tokio::test(flavor = "multi_thread")]
async fn commands_that_keep_failing_are_dead_lettered_with_a_readable_status() {
    let max_deliver = 2;
    let stack = Stack::start(StackOptions {
        fanout: false,
        env: vec![(
            "ALLO_JETSTREAM__MAX_DELIVER".into(),
            max_deliver.to_string(),
        )],
        ..Default::default()
    })
    .await;
    let conversation = stack.create_conversation("alice", "group", &["bob"]).await;
    sqlx::raw_sql(
        "CREATE FUNCTION doom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.body = 'doomed' THEN RAISE EXCEPTION 'doomed by the test'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER doom BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION doom();",
    )
    .execute(&stack.db)
    .await
    .expect("trigger");
    let alice = stack.token("alice");
    let sent = stack
        .post(
            &alice,
            "sendMessage",
            json!({"conversationID": conversation, "message": "doomed"}),
        )
        .await;
    assert_eq!(sent.status, 202);
    let command_id = sent.body["commandId"].as_str().unwrap().to_string();
    let subjects = allo_common::subjects::Subjects::of(&stack.settings);
    let js = async_nats::jetstream::new(stack.nats.clone());
    let poison_id = uuid::Uuid::now_v7();
    js.publish(
        format!(
            "{}.cmd.messages.0.sendMessage.{poison_id}",
            subjects.prefix()
        ),
        "{\"not\": \"a command\"}".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let outcome = stack.outcome(&alice, &command_id).await;
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    assert_eq!(outcome["code"], "dead_lettered", "{outcome}");
    stack
        .wait_count(
            "SELECT count(*) FROM dead_letters",
            2,
            Duration::from_secs(10),
        )
        .await;
    let parked: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT command_id, deliveries::bigint FROM dead_letters ORDER BY at")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    let parked: BTreeSet<(String, i64)> = parked
        .into_iter()
        .map(|(id, n)| (id.to_string(), n))
        .collect();
    // The failing command was delivered max_deliver times and set aside on the next delivery.
    assert_eq!(
        parked,
        BTreeSet::from([
            (command_id.clone(), max_deliver as i64 + 1),
            (poison_id.to_string(), 1)
        ])
    );
    // The worker really tried (and NAKed) each delivery: it logged each failure.
    let log = stack.log("worker-0");
    assert_eq!(
        log.matches("command failed; will be redelivered").count(),
        max_deliver as usize,
        "{log}"
    );
    assert_eq!(stack.pending_commands().await, 0);
    assert_eq!(stack.count("SELECT count(*) FROM messages").await, 0);
    // The conversation goes on.
    stack
        .act(
            "alice",
            "sendMessage",
            json!({"conversationID": conversation, "message": "still here"}),
        )
        .await;
    assert_eq!(stack.count("SELECT count(*) FROM messages").await, 1);
}

/// SIGTERM: the fan-out closes its sockets and exits; the API exits; neither hangs.
#[tokio::test(flavor = "multi_thread")]
async fn api_and_fanout_stop_cleanly_on_sigterm() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let mut client = stack.socket("alice").await;
    let started = std::time::Instant::now();
    assert!(
        stack.terminate("fanout").await,
        "fan-out did not exit cleanly"
    );
    let closed = client.next_kind("disconnect", EVENT_WAIT).await;
    assert!(
        closed.is_some(),
        "socket was not closed; got {:?} after {:?}",
        client.backlog(),
        started.elapsed()
    );
    // Closed by the server on purpose, not by a dropped connection.
    assert_eq!(closed.unwrap()["reason"], "io server disconnect");
    assert!(stack.terminate("api").await, "api did not exit cleanly");
}

/// A user's command budget is shared by every ingress process (here the API and a fan-out):
/// past it, 429 with Retry-After over HTTP and a 429 ack over the socket; nothing published;
/// other users are not affected.
#[tokio::test(flavor = "multi_thread")]
async fn commands_are_rate_limited_per_user_across_ingress_processes() {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("ALLO_LIMITS__RATE_MAX_PER_WINDOW".into(), "5".into()),
            ("ALLO_LIMITS__RATE_WINDOW_SECS".into(), "3600".into()),
        ],
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await; // 1 of alice's 5
    let send = |i: i32| json!({"conversationID": conv, "message": format!("n{i}")});
    for i in 0..2 {
        assert_eq!(
            stack
                .post(&stack.token("alice"), "sendMessage", send(i))
                .await
                .status,
            202
        );
    }
    let mut socket = stack.socket("alice").await;
    for i in 2..4 {
        socket.command("sendMessage", send(i)).await;
    }
    let limited = stack
        .post(&stack.token("alice"), "sendMessage", send(9))
        .await;
    assert_eq!(limited.status, 429, "{:?}", limited.body);
    assert_eq!(limited.content_type(), "application/problem+json");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry));
    assert_eq!(limited.body["code"], "rate_limited", "{:?}", limited.body);
    let over_socket = socket.emit("sendMessage", send(10)).await;
    assert_eq!(over_socket["error"]["status"], 429, "{over_socket}");
    assert_eq!(
        over_socket["error"]["code"], "rate_limited",
        "{over_socket}"
    );
    assert!(over_socket.get("commandId").is_none());
    assert_eq!(
        stack
            .post(&stack.token("bob"), "sendMessage", send(11))
            .await
            .status,
        202
    );
    // The stream's sequence counts every command ingress published: alice's five and bob's one.
    assert_eq!(
        stack.commands_published().await,
        6,
        "a limited command was published"
    );
    stack
        .wait_count("SELECT count(*) FROM messages", 5, Duration::from_secs(10))
        .await;
    assert_eq!(
        stack
            .count("SELECT count(*) FROM messages WHERE body IN ('n9', 'n10')")
            .await,
        0
    );
}

/// `/metrics` (Prometheus) on the API and the fan-out, and on a worker that was given an
/// address, count what happened.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_happened() {
    let stack = Stack::start(StackOptions::default()).await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    stack
        .act(
            "alice",
            "sendMessage",
            json!({"conversationID": conv, "message": "counted"}),
        )
        .await;
    bob.next_named("message", EVENT_WAIT)
        .await
        .expect("delivered");
    let text = |url: String| {
        let http = stack.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let api = text(format!("{}/metrics", stack.api_admin_url)).await;
    assert!(
        api.contains("allo_commands_accepted_total{operation=\"sendMessage\"} 1"),
        "{api}"
    );
    let worker = stack.metrics_of("worker-0").await.expect("worker metrics");
    assert!(
        worker.contains(
            "allo_commands_applied_total{operation=\"sendMessage\",outcome=\"committed\"} 1"
        ),
        "{worker}"
    );
    let fanout = text(format!("{}/metrics", stack.fanout_admin_url)).await;
    assert!(fanout.contains("allo_events_delivered_total 1"), "{fanout}");
    assert!(fanout.contains("allo_sockets_connected 1"), "{fanout}");
}

/// `Prefer: wait` gives up after the time asked for and answers 202 like a plain POST; the
/// command is still applied once a worker runs.
#[tokio::test(flavor = "multi_thread")]
async fn prefer_wait_times_out_to_202() {
    let mut stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        ..Default::default()
    })
    .await;
    let alice = stack.token("alice");
    let started = std::time::Instant::now();
    let reply = stack
        .post_raw(
            Some(&alice),
            "createConversation",
            json!({"participants": ["bob"], "type": "group"}).to_string(),
            &[("prefer", "wait=1")],
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(reply.body["status"], "accepted");
    let command_id = reply.body["commandId"].as_str().unwrap().to_string();
    assert_eq!(
        reply.headers["location"],
        format!("/api/commands/{command_id}").as_str()
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "waited {waited:?} for a 1 s wait"
    );
    stack.start_worker().await;
    assert_eq!(
        stack.outcome(&alice, &command_id).await["status"],
        "committed"
    );
}

/// JWT edge cases: a token without `exp` or `sub`, `alg: none`, another algorithm with the
/// right secret, and expiry just inside and just outside the 5 s leeway.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_edge_cases_are_refused() {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let stack = Stack::start(StackOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let secret = stack.settings.jwt_secret.clone();
    let now = chrono::Utc::now().timestamp();
    let sign = |alg: Algorithm, claims: serde_json::Value| {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("token")
    };
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "alice", "exp": now + 3600}))
    );
    let refused = [
        ("no exp", sign(Algorithm::HS256, json!({"sub": "alice"}))),
        ("no sub", sign(Algorithm::HS256, json!({"exp": now + 3600}))),
        ("alg none", unsigned),
        (
            "HS512",
            sign(Algorithm::HS512, json!({"sub": "alice", "exp": now + 3600})),
        ),
        (
            "HS384",
            sign(Algorithm::HS384, json!({"sub": "alice", "exp": now + 3600})),
        ),
        (
            "expired past the leeway",
            sign(Algorithm::HS256, json!({"sub": "alice", "exp": now - 30})),
        ),
    ];
    for (what, token) in &refused {
        let reply = stack.get(Some(token), "/api/conversations").await;
        let reply = allo_e2e::assert_problem(reply, 401);
        assert_eq!(reply.headers["www-authenticate"], "Bearer", "{what}");
        assert!(
            SocketClient::connect(&stack.fanout_url, token)
                .await
                .is_err(),
            "socket accepted a token with {what}"
        );
    }
    // Inside the leeway (a few seconds of clock skew) the token still works. The clock is
    // read again here: the refusals above can take seconds on a loaded machine.
    let now = chrono::Utc::now().timestamp();
    let skewed = sign(Algorithm::HS256, json!({"sub": "alice", "exp": now - 2}));
    let reply = stack.get(Some(&skewed), "/api/conversations").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let fresh = sign(Algorithm::HS256, json!({"sub": "alice", "exp": now + 60}));
    assert_eq!(
        stack.get(Some(&fresh), "/api/conversations").await.status,
        200
    );
    assert_eq!(stack.commands_published().await, 0);
}

/// A non-participant can read none of a conversation's parts: one message, pins, the event
/// log, a poll; a missing conversation is 404, not 403 (no oracle beyond that).
#[tokio::test(flavor = "multi_thread")]
async fn non_participants_read_no_message_pin_event_or_poll() {
    let stack = Stack::start(StackOptions {
        fanout: false,
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let m = allo_e2e::id(
        &stack
            .act(
                "alice",
                "sendMessage",
                json!({"conversationID": conv, "message": "members only"}),
            )
            .await,
        "messageId",
    );
    stack
        .act(
            "alice",
            "pinMessage",
            json!({"conversationID": conv, "messageId": m, "pin": true}),
        )
        .await;
    let poll = allo_e2e::id(
        &stack
            .act(
                "alice",
                "createPoll",
                json!({"conversationID": conv, "question": "Q?", "options": ["a", "b"]}),
            )
            .await,
        "messageId",
    );
    let paths = [
        format!("/api/conversations/{conv}/messages/{m}"),
        format!("/api/conversations/{conv}/pins"),
        format!("/api/conversations/{conv}/events?after=0"),
        format!("/api/conversations/{conv}/polls/{poll}"),
    ];
    let (bob, carol) = (stack.token("bob"), stack.token("carol"));
    for path in &paths {
        // A member reads it: the refusal below is about carol, not about the path.
        assert_eq!(stack.get(Some(&bob), path).await.status, 200, "{path}");
        let reply = allo_e2e::assert_problem(stack.get(Some(&carol), path).await, 403);
        assert_eq!(reply.body["code"], "not_participant", "{path}");
        assert!(
            !reply.body.to_string().contains("members only"),
            "{path} leaked content"
        );
    }
    let missing = uuid::Uuid::now_v7();
    let reply = stack
        .get(
            Some(&carol),
            &format!("/api/conversations/{missing}/messages/{m}"),
        )
        .await;
    assert_eq!(
        allo_e2e::assert_problem(reply, 404).body["code"],
        "not_found"
    );
}

/// Commands that arrive together are applied in one batch; one refused (a non-participant's)
/// leaves no trace but its rejection, and the others commit with gap-free seqs.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_command_in_a_batch_does_not_disturb_the_others() {
    let mut stack = Stack::start(StackOptions {
        fanout: false,
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    assert!(stack.terminate("worker-0").await);
    let mut ids = Vec::new();
    for (i, user) in ["alice", "bob", "carol", "alice", "bob"].iter().enumerate() {
        let reply = stack
            .post(
                &stack.token(user),
                "sendMessage",
                json!({"conversationID": conv, "message": format!("{user} {i}")}),
            )
            .await;
        assert_eq!(reply.status, 202);
        ids.push((*user, allo_e2e::id(&reply.body, "commandId")));
    }
    stack.wait_pending(5, Duration::from_secs(5)).await;
    stack.start_worker().await;
    for (user, command) in &ids {
        let outcome = stack.outcome(&stack.token(user), command).await;
        if *user == "carol" {
            assert_eq!(
                (outcome["status"].as_str(), outcome["code"].as_str()),
                (Some("rejected"), Some("not_participant"))
            );
        } else {
            assert_eq!(outcome["status"], "committed", "{outcome}");
        }
    }
    let log: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, coalesce(data->>'message', '') FROM events ORDER BY seq")
            .fetch_all(&stack.db)
            .await
            .unwrap();
    assert_eq!(
        log.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(log.iter().all(|(_, text)| !text.starts_with("carol")));
    assert_eq!(
        stack
            .count("SELECT count(*) FROM messages WHERE author_id = 'carol'")
            .await,
        0
    );
    assert_eq!(stack.count("SELECT last_seq FROM conversations").await, 5);
}

/// A batch whose transaction fails as a whole (here a deferred trigger refuses one row at
/// commit) is settled one command at a time: the others commit, the bad one is retried with a
/// delay and dead-lettered, and the conversation's seqs stay gap-free.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_batch_falls_back_to_one_command_at_a_time() {
    let mut stack = Stack::start(StackOptions {
        fanout: false,
        env: vec![("ALLO_JETSTREAM__MAX_DELIVER".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    sqlx::raw_sql(
        "CREATE FUNCTION doom_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.body = 'fails at commit' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER doom_at_commit AFTER INSERT ON messages
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION doom_at_commit();",
    )
    .execute(&stack.db)
    .await
    .expect("trigger");
    assert!(stack.terminate("worker-0").await);
    let alice = stack.token("alice");
    let mut ids = Vec::new();
    for text in ["one", "two", "fails at commit", "three", "four"] {
        let reply = stack
            .post(
                &alice,
                "sendMessage",
                json!({"conversationID": conv, "message": text}),
            )
            .await;
        assert_eq!(reply.status, 202);
        ids.push((text, allo_e2e::id(&reply.body, "commandId")));
    }
    stack.wait_pending(5, Duration::from_secs(5)).await;
    let worker = stack.start_worker().await;
    for (text, command) in &ids {
        let outcome = stack.outcome(&alice, command).await;
        if *text == "fails at commit" {
            assert_eq!(
                (outcome["status"].as_str(), outcome["code"].as_str()),
                (Some("rejected"), Some("dead_lettered")),
                "{outcome}"
            );
        } else {
            assert_eq!(outcome["status"], "committed", "{text}: {outcome}");
        }
    }
    assert!(
        stack
            .log(&worker)
            .contains("batch failed; applying one by one"),
        "the batch did not fall back: {}",
        stack.log(&worker)
    );
    let texts: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, data->>'message' FROM events WHERE type = 'message' ORDER BY seq",
    )
    .fetch_all(&stack.db)
    .await
    .unwrap();
    assert_eq!(
        texts,
        vec![
            (2, "one".to_string()),
            (3, "two".to_string()),
            (4, "three".to_string()),
            (5, "four".to_string())
        ]
    );
    assert_eq!(stack.count("SELECT count(*) FROM dead_letters").await, 1);
    stack.wait_pending(0, Duration::from_secs(5)).await;
}

/// SIGTERM while commands are in flight: the worker finishes the ones it started, hands back
/// the ones it holds but has not started (so another process takes them at once, not after
/// `ack_wait`), and exits cleanly; every command is applied once.
///
/// Fails today: the pull loop stops its message stream on shutdown (`take_until`) and the
/// commands JetStream already delivered into it are dropped without a NAK, so they wait for
/// `ack_wait` (3 of 60 here). Run with `--ignored` once the worker rewrite hands them back.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_worker_hands_back_what_it_has_not_started() {
    let mut stack = Stack::start(StackOptions {
        fanout: false,
        ack_wait_secs: 60,
        env: vec![("ALLO_WORKER__BATCH_SIZE".into(), "4".into())],
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    // Hold the conversation's row lock so the worker's first batches block mid-apply.
    let mut blocker = stack.db.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM conversations WHERE id = $1::uuid FOR UPDATE")
        .bind(&conv)
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let alice = stack.token("alice");
    for i in 0..60 {
        let reply = stack
            .post(
                &alice,
                "sendMessage",
                json!({"conversationID": conv, "message": format!("m{i}")}),
            )
            .await;
        assert_eq!(reply.status, 202);
    }
    // The worker holds more than one batch: some blocked mid-apply, some not started.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut held = 0;
    while tokio::time::Instant::now() < deadline {
        held = stack.commands_in_flight(Pool::Messages).await;
        if held > 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(held > 4, "the worker took only {held}");
    stack.signal("worker-0", "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.rollback().await.expect("unlock");
    assert!(
        stack.wait_exit("worker-0", Duration::from_secs(20)).await,
        "the worker did not exit cleanly"
    );
    // Well inside the 60 s ack_wait: what the worker held but had not started came back at once.
    stack.start_worker().await;
    stack
        .wait_count("SELECT count(*) FROM messages", 60, Duration::from_secs(20))
        .await;
    let seqs: Vec<(i64,)> = sqlx::query_as("SELECT seq FROM events ORDER BY seq")
        .fetch_all(&stack.db)
        .await
        .unwrap();
    assert_eq!(
        seqs.into_iter().map(|(s,)| s).collect::<Vec<_>>(),
        (1..=61).collect::<Vec<_>>()
    );
    stack.wait_pending(0, Duration::from_secs(5)).await;
}
