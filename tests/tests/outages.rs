//! The infrastructure goes away and comes back: with Postgres down the API keeps accepting
//! (JetStream holds the commands) and the workers drain the backlog when it returns; with NATS
//! down the API answers 503 and accepts nothing it cannot keep. Each test has its own NATS or
//! Postgres to stop.

use std::time::Duration;

use allo_e2e::infra::{OwnNats, OwnPostgres};
use allo_e2e::{Stack, StackOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn commands_accepted_while_postgres_is_down_are_applied_when_it_returns() {
    let postgres = OwnPostgres::start().await;
    let stack = Stack::start(StackOptions {
        fanout: false,
        admin_database_url: Some(postgres.admin_url()),
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    postgres.stop().await;

    let ready = stack.get(None, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body["postgres"].as_bool()),
        (503, Some(false))
    );
    for i in 0..10 {
        let reply = stack
            .post(
                &stack.token("bob"),
                "sendMessage",
                json!({"conversationID": conv, "message": format!("while down {i}")}),
            )
            .await;
        assert_eq!(
            reply.status, 202,
            "ingress must keep accepting: {:?}",
            reply.body
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.resume().await;

    stack
        .wait_count("SELECT count(*) FROM messages", 10, Duration::from_secs(60))
        .await;
    let seqs: Vec<(i64,)> = sqlx::query_as("SELECT seq FROM events ORDER BY seq")
        .fetch_all(&stack.db)
        .await
        .unwrap();
    assert_eq!(
        seqs.into_iter().map(|(s,)| s).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    assert_eq!(
        stack.count("SELECT count(*) FROM dead_letters").await,
        0,
        "an outage used up deliveries"
    );
    assert_eq!(stack.pending_commands().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_nats_down_the_api_refuses_and_then_recovers() {
    let mut nats = OwnNats::start().await;
    let stack = Stack::start(StackOptions {
        fanout: false,
        nats_url: Some(nats.url()),
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    nats.stop().await;

    let reply = stack
        .post(
            &stack.token("alice"),
            "sendMessage",
            json!({"conversationID": conv, "message": "into the void"}),
        )
        .await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.content_type(), "application/problem+json");
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(stack.get(None, "/readyz").await.status, 503);

    nats.resume().await;
    let mut accepted = None;
    for _ in 0..100 {
        let reply = stack
            .post_wait(
                &stack.token("alice"),
                "sendMessage",
                json!({"conversationID": conv, "message": "back"}),
            )
            .await;
        if reply.status == 201 {
            accepted = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted = accepted.expect("accepted and applied after NATS returned");
    assert_eq!(accepted.body["result"]["message"], "back");
    // The refused message was never stored anywhere.
    assert_eq!(
        stack
            .count("SELECT count(*) FROM messages WHERE body = 'into the void'")
            .await,
        0
    );
}
