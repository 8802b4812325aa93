//! Totals a user could grow one accepted command at a time are bounded (issue 11): members of a
//! conversation, pending scheduled messages, distinct reactions on one message. Each refusal
//! is 422 `limit_reached`, recorded as the command's outcome, and changes nothing.

use allo_e2e::{Stack, StackOptions, id};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn totals_are_bounded_and_a_refusal_changes_nothing() {
    let stack = Stack::start(StackOptions {
        fanout: false,
        env: vec![
            ("ALLO_LIMITS__CONVERSATION_MEMBERS_MAX".into(), "3".into()),
            ("ALLO_LIMITS__SCHEDULED_PER_USER_MAX".into(), "2".into()),
            (
                "ALLO_LIMITS__REACTIONS_PER_USER_PER_MESSAGE_MAX".into(),
                "2".into(),
            ),
        ],
        ..Default::default()
    })
    .await;
    let members = |conv: String| {
        let stack = &stack;
        async move {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT user_id FROM participants WHERE conversation_id = $1::uuid AND left_at IS NULL ORDER BY user_id",
            )
            .bind(conv)
            .fetch_all(&stack.db)
            .await
            .expect("members");
            rows
        }
    };

    // A group of 2: adding two more would make 4 > 3, so neither is added.
    let group = stack.create_conversation("alice", "group", &["bob"]).await;
    stack
        .refused(
            "alice",
            "addParticipants",
            json!({"conversationID": group, "participants": ["carol", "dave"]}),
        )
        .await
        .is(422, "limit_reached");
    assert_eq!(members(group.clone()).await, ["alice", "bob"]);
    stack
        .act(
            "alice",
            "addParticipants",
            json!({"conversationID": group, "participants": ["carol"]}),
        )
        .await;
    assert_eq!(members(group.clone()).await, ["alice", "bob", "carol"]);

    // A channel fills up the same way through joins.
    let channel = stack
        .create_conversation("alice", "channel", &["bob"])
        .await;
    stack
        .act(
            "carol",
            "joinConversation",
            json!({"conversationID": channel}),
        )
        .await;
    stack
        .refused(
            "dave",
            "joinConversation",
            json!({"conversationID": channel}),
        )
        .await
        .is(422, "limit_reached");
    assert_eq!(members(channel).await, ["alice", "bob", "carol"]);

    // Pending scheduled messages per user; a cancelled one frees its place.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let schedule =
        |text: &str| json!({"conversationID": group, "message": text, "scheduledTime": later});
    let first = stack.act("alice", "scheduleMessage", schedule("one")).await;
    stack.act("alice", "scheduleMessage", schedule("two")).await;
    stack
        .refused("alice", "scheduleMessage", schedule("three"))
        .await
        .is(422, "limit_reached");
    // Per user: bob's budget is his own.
    stack.act("bob", "scheduleMessage", schedule("bob's")).await;
    stack
        .act(
            "alice",
            "cancelScheduledMessage",
            json!({"scheduledMessageId": id(&first, "scheduledMessageId")}),
        )
        .await;
    stack
        .act("alice", "scheduleMessage", schedule("three"))
        .await;
    let pending: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM scheduled_messages WHERE author_id = 'alice' AND status = 'pending' ORDER BY body",
    )
    .fetch_all(&stack.db)
    .await
    .expect("scheduled");
    assert_eq!(pending, ["three", "two"]);

    // Distinct reactions of one user on one message; taking one back frees its place.
    let sent = stack
        .act(
            "bob",
            "sendMessage",
            json!({"conversationID": group, "message": "react to me"}),
        )
        .await;
    let message = id(&sent, "messageId");
    let react =
        |emoji: &str| json!({"conversationID": group, "messageId": message, "emoji": emoji});
    stack.act("alice", "reactionMessage", react("👍")).await;
    stack.act("alice", "reactionMessage", react("🎉")).await;
    stack
        .refused("alice", "reactionMessage", react("🔥"))
        .await
        .is(422, "limit_reached");
    stack.act("carol", "reactionMessage", react("🔥")).await;
    stack.act("alice", "reactionMessage", react("👍")).await; // taken back
    stack.act("alice", "reactionMessage", react("🔥")).await;
    let mine: Vec<String> = sqlx::query_scalar(
        "SELECT emoji FROM reactions WHERE user_id = 'alice' AND message_id = $1::uuid ORDER BY emoji",
    )
    .bind(&message)
    .fetch_all(&stack.db)
    .await
    .expect("reactions");
    let mut want = vec!["🎉".to_string(), "🔥".to_string()];
    want.sort();
    assert_eq!(mine, want);
}

/// Reads have a budget per user (per API replica): past it 429 problem+json with
/// `Retry-After`, other users unaffected, and the budget refills with time.
#[tokio::test(flavor = "multi_thread")]
async fn reads_past_a_users_budget_are_refused_until_it_refills() {
    let stack = Stack::start(StackOptions {
        fanout: false,
        env: vec![
            ("ALLO_LIMITS__READS_PER_USER_PER_SEC".into(), "1".into()),
            ("ALLO_LIMITS__READS_BURST".into(), "3".into()),
        ],
        ..Default::default()
    })
    .await;
    let alice = stack.token("alice");
    for _ in 0..3 {
        let reply = stack.get(Some(&alice), "/api/conversations").await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let refused =
        allo_e2e::assert_problem(stack.get(Some(&alice), "/api/conversations").await, 429);
    assert_eq!(refused.body["code"], "rate_limited");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    // Another user's budget is their own.
    let bob = stack
        .get(Some(&stack.token("bob")), "/api/conversations")
        .await;
    assert_eq!(bob.status, 200);
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    let again = stack.get(Some(&alice), "/api/conversations").await;
    assert_eq!(again.status, 200, "{:?}", again.body);
}
