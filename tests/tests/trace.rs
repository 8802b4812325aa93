//! Following one command through every service: its id and W3C trace context travel in NATS
//! headers from the API (on the command) through the worker (on its events) to the fan-out,
//! and each service's log names them (`RUST_LOG=…,allo::trace=debug`).

use std::time::Duration;

use allo_common::ids::CommandId;
use allo_common::ops::Operation;
use allo_common::partition::RouteHash;
use allo_common::subjects::Subjects;
use allo_common::trace::{COMMAND_ID, TRACEPARENT, TraceContext};
use allo_e2e::{Stack, StackOptions, id};
use serde_json::json;

fn header(headers: &async_nats::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_string())
}

/// The command message as the API stored it on the command stream (read before a worker
/// takes it: the stream is a work queue).
async fn command_message(
    stack: &Stack,
    conversation: &str,
    command_id: &str,
) -> async_nats::HeaderMap {
    let js = async_nats::jetstream::new(stack.nats.clone());
    let subjects = Subjects::of(&stack.settings);
    let stream = js
        .get_stream(subjects.command_stream())
        .await
        .expect("command stream");
    let conversation = uuid::Uuid::parse_str(conversation).expect("conversation id");
    let subject = subjects.command_in(
        Operation::SendMessage,
        RouteHash::of(&conversation).partition(subjects.partitions()),
        CommandId::parse(command_id).expect("command id"),
    );
    stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap_or_else(|e| panic!("{subject} on the command stream: {e}"))
        .headers
}

/// The last event of `kind` in the conversation, as stored on the event stream.
async fn event_message(stack: &Stack, conversation: &str, kind: &str) -> async_nats::HeaderMap {
    let js = async_nats::jetstream::new(stack.nats.clone());
    let subjects = Subjects::of(&stack.settings);
    let stream = js
        .get_stream(subjects.event_stream())
        .await
        .expect("event stream");
    let subject = format!(
        "{}.evt.{conversation}.{kind}",
        stack.settings.subject_prefix
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(msg) => return msg.headers,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "{subject} on the event stream: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until process `name`'s log has a line with every one of `needles`; returns it.
async fn log_line(stack: &Stack, name: &str, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = stack.log(name);
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line of {name} with {needles:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_followed_by_its_trace_from_ingress_to_worker_to_fanout() {
    let mut stack = Stack::start(StackOptions {
        env: vec![("RUST_LOG".into(), "info,sqlx=warn,allo::trace=debug".into())],
        ..Default::default()
    })
    .await;
    let conversation = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conversation).await;

    // The worker is paused, so the command waits on the stream to be read as stored.
    stack.signal("worker-0", "STOP");
    let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    let reply = stack
        .post_raw(
            Some(&stack.token("alice")),
            "sendMessage",
            json!({"conversationID": conversation, "message": "traced"}).to_string(),
            &[("traceparent", traceparent.as_str())],
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let command_id = id(&reply.body, "commandId");
    let stored = command_message(&stack, &conversation, &command_id).await;
    assert_eq!(header(&stored, COMMAND_ID), Some(command_id.clone()));
    let on_command = header(&stored, TRACEPARENT)
        .and_then(|h| TraceContext::parse(&h))
        .expect("the command carries a traceparent");
    assert_eq!(
        on_command.trace_id(),
        trace_id,
        "the caller's trace is continued"
    );
    assert_ne!(
        on_command.span_id, 0xb7ad6b7169203331,
        "the API is a new span of it"
    );
    stack.signal("worker-0", "CONT");

    let on_event = event_message(&stack, &conversation, "message").await;
    assert_eq!(header(&on_event, COMMAND_ID), Some(command_id.clone()));
    let event_trace = header(&on_event, TRACEPARENT)
        .and_then(|h| TraceContext::parse(&h))
        .expect("the event carries a traceparent");
    assert_eq!(event_trace.trace_id(), trace_id);
    bob.event_about("message", &id(&reply.body, "messageId"))
        .await;

    // Every service's log names the command and the trace.
    let api = log_line(&stack, "api", &["command accepted", &trace_id, &command_id]).await;
    let worker = log_line(
        &stack,
        "worker-0",
        &["command applied", &trace_id, &command_id],
    )
    .await;
    let fanout = log_line(
        &stack,
        "fanout",
        &["event received", &trace_id, &command_id],
    )
    .await;
    for line in [&api, &worker, &fanout] {
        assert!(line.contains("trace_id"), "{line}");
    }

    // Without a traceparent (or with a malformed one) the API starts a trace of its own.
    stack.signal("worker-0", "STOP");
    for given in [None, Some("00-not-a-trace-01")] {
        let headers: Vec<(&str, &str)> = given.map(|g| ("traceparent", g)).into_iter().collect();
        let reply = stack
            .post_raw(
                Some(&stack.token("alice")),
                "sendMessage",
                json!({"conversationID": conversation, "message": "untraced"}).to_string(),
                &headers,
            )
            .await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
        let stored = command_message(&stack, &conversation, &id(&reply.body, "commandId")).await;
        let started = header(&stored, TRACEPARENT)
            .and_then(|h| TraceContext::parse(&h))
            .expect("a started trace");
        assert_ne!(started.trace_id(), trace_id);
    }
    stack.signal("worker-0", "CONT");

    // A system event names no command, so it carries no command id and no trace either.
    let poll = stack
        .act(
            "alice",
            "createPoll",
            json!({"conversationID": conversation, "question": "?", "options": ["a", "b"]}),
        )
        .await;
    let vote = json!({"conversationID": conversation, "messageId": id(&poll, "messageId"), "optionIndex": 0});
    stack.act("bob", "votePoll", vote).await;
    let voted = event_message(&stack, &conversation, "pollVoted").await;
    assert_eq!(
        (header(&voted, COMMAND_ID), header(&voted, TRACEPARENT)),
        (None, None),
        "a system event is traced to its voter"
    );
    stack.kill("worker-0").await;
}
