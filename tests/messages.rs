//! Every message operation through HTTP, JetStream, the worker, Postgres and the npm
//! socket.io-client: happy paths and their events, the rules (synchronously where ingress can
//! know, via command status and the actor's `error` event where only the worker can), and bad
//! input refused with nothing stored.

use std::time::Duration;

use allo_e2e::{Stack, StackOptions};
use serde_json::{Value, json};

fn id(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_string()
}

/// Bad input for every operation: problem+json naming the field, nothing published or stored.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_to_every_operation_is_refused_and_changes_nothing() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        ..Default::default()
    })
    .await;
    let token = stack.token("alice");
    let (c, m) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "sendSecureMessage",
            json!({"conversationID": c, "message": "not base64!", "encrypted": true, "encryptionAlgorithm": "AES-GCM"}),
            422,
            "message",
        ),
        (
            "sendSecureMessage",
            json!({"conversationID": c, "message": "QUFB".repeat(6000), "encrypted": true, "encryptionAlgorithm": "AES-GCM"}),
            422,
            "message",
        ),
        (
            "sendSecureMessage",
            json!({"conversationID": c, "message": "aGk=", "encrypted": "yes", "encryptionAlgorithm": "AES-GCM"}),
            422,
            "encrypted",
        ),
        (
            "sendSecureMessage",
            json!({"conversationID": c, "message": "aGk=", "encrypted": true}),
            422,
            "encryptionAlgorithm",
        ),
        (
            "sendSecureMessage",
            json!({"conversationID": c, "message": "aGk=", "encrypted": true, "encryptionAlgorithm": "A", "userID": "bob"}),
            403,
            "userID",
        ),
        (
            "sendVoiceMessage",
            json!({"conversationID": c, "voiceUrl": "/local/file.ogg"}),
            422,
            "voiceUrl",
        ),
        (
            "sendVoiceMessage",
            json!({"conversationID": c, "voiceUrl": format!("https://cdn.example.com/{}", "a".repeat(2100))}),
            422,
            "voiceUrl",
        ),
        (
            "sendVoiceMessage",
            json!({"conversationID": c}),
            422,
            "voiceUrl",
        ),
        (
            "sendSticker",
            json!({"conversationID": c, "stickerUrl": "javascript:alert(1)"}),
            422,
            "stickerUrl",
        ),
        (
            "sendEphemeralMessage",
            json!({"conversationID": c, "message": "x", "expiresIn": 999}),
            422,
            "expiresIn",
        ),
        (
            "sendEphemeralMessage",
            json!({"conversationID": c, "message": "x", "expiresIn": 604_800_001u64}),
            422,
            "expiresIn",
        ),
        (
            "sendEphemeralMessage",
            json!({"conversationID": c, "message": "x", "expiresIn": "10s"}),
            422,
            "expiresIn",
        ),
        (
            "editMessage",
            json!({"conversationID": c, "messageId": m, "newMessage": ""}),
            422,
            "newMessage",
        ),
        (
            "editMessage",
            json!({"conversationID": c, "messageId": m}),
            422,
            "newMessage",
        ),
        (
            "deleteMessage",
            json!({"conversationID": c, "messageId": "42"}),
            422,
            "messageId",
        ),
        (
            "unsendMessage",
            json!({"conversationID": c}),
            422,
            "messageId",
        ),
        (
            "forwardMessage",
            json!({"fromConversationID": c, "toConversationID": "x", "messageId": m}),
            422,
            "toConversationID",
        ),
        (
            "forwardMessage",
            json!({"toConversationID": c, "messageId": m}),
            422,
            "fromConversationID",
        ),
        (
            "messageRead",
            json!({"messageId": m}),
            422,
            "conversationID",
        ),
        (
            "pinMessage",
            json!({"conversationID": c, "messageId": m, "pin": "true"}),
            422,
            "pin",
        ),
        (
            "reactionMessage",
            json!({"conversationID": c, "messageId": m, "emoji": "hello"}),
            422,
            "emoji",
        ),
        (
            "reactionMessage",
            json!({"conversationID": c, "messageId": m, "emoji": "👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍"}),
            422,
            "emoji",
        ),
        (
            "leaveConversation",
            json!({"conversationID": 5}),
            422,
            "conversationID",
        ),
        (
            "addParticipants",
            json!({"conversationID": c, "participants": []}),
            422,
            "participants",
        ),
        (
            "addParticipants",
            json!({"conversationID": c, "participants": ["ok", "has space"]}),
            422,
            "participants[1]",
        ),
        (
            "removeParticipant",
            json!({"conversationID": c, "participantID": ""}),
            422,
            "participantID",
        ),
        (
            "addAdmin",
            json!({"conversationID": c}),
            422,
            "participantID",
        ),
        (
            "removeAdmin",
            json!({"conversationID": c, "participantID": 7}),
            422,
            "participantID",
        ),
    ];
    for (op, body, status, field) in &cases {
        let reply = stack.post(&token, op, body.clone()).await;
        let shown = body.to_string();
        assert_eq!(
            reply.status, *status,
            "{op} {:.120}: {:?}",
            shown, reply.body
        );
        assert_eq!(reply.content_type(), "application/problem+json");
        assert_eq!(reply.body["field"], *field, "{op} {:.120}", shown);
    }
    assert_eq!(stack.pending_commands().await, 0);
    assert_eq!(stack.count("SELECT count(*) FROM commands").await, 0);
    assert_eq!(stack.count("SELECT count(*) FROM messages").await, 0);
}

/// Rules only the worker can judge: refused with the right status and code, readable on the
/// command, sent to the actor's sockets as `error`, and nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn rules_are_enforced_by_the_worker() {
    let stack = Stack::start(StackOptions {
        env: vec![("ALLO_LIMITS__UNSEND_WINDOW_SECS".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let group = stack
        .create_conversation("alice", "group", &["bob", "carol"])
        .await;
    let other = stack.create_conversation("alice", "group", &["bob"]).await;
    let channel = stack
        .create_conversation("alice", "channel", &["bob"])
        .await;
    let direct = stack.create_conversation("alice", "direct", &["bob"]).await;
    let send = |user: &'static str, conv: String, text: &'static str| {
        let stack = &stack;
        async move {
            id(
                &stack
                    .act(
                        user,
                        "sendMessage",
                        json!({"conversationID": conv, "message": text}),
                    )
                    .await,
                "messageId",
            )
        }
    };
    let alices = send("alice", group.clone(), "alice's").await;
    let elsewhere = send("alice", other.clone(), "elsewhere").await;
    let sticker = id(
        &stack
            .act(
                "alice",
                "sendSticker",
                json!({"conversationID": group, "stickerUrl": "https://s.example.com/cat.png"}),
            )
            .await,
        "messageId",
    );
    let ephemeral = id(
        &stack
            .act(
                "alice",
                "sendEphemeralMessage",
                json!({"conversationID": group, "message": "poof", "expiresIn": 60_000}),
            )
            .await,
        "messageId",
    );
    let in_channel = send("alice", channel.clone(), "news").await;
    let mut bob_socket = stack.socket("bob").await;

    let r = |m: &str| json!({"conversationID": group, "messageId": m});
    // editMessage: author only; not a sticker.
    let (status, code, command) = stack
        .refused(
            "bob",
            "editMessage",
            json!({"conversationID": group, "messageId": alices, "newMessage": "hijack"}),
        )
        .await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let error = bob_socket
        .next_matching(
            "error",
            |e| e["commandId"] == command.as_str(),
            Duration::from_secs(10),
        )
        .await
        .expect("error event");
    assert_eq!(error["code"], "forbidden");
    let outcome = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/commands/{command}"),
        )
        .await;
    assert_eq!(
        (
            outcome.body["status"].as_str(),
            outcome.body["code"].as_str()
        ),
        (Some("rejected"), Some("forbidden"))
    );
    assert_eq!(
        stack
            .refused(
                "alice",
                "editMessage",
                json!({"conversationID": group, "messageId": sticker, "newMessage": "x"})
            )
            .await
            .0,
        422
    );
    // A message id of another conversation is not found, whatever the operation.
    for op in ["deleteMessage", "unsendMessage", "messageRead"] {
        assert_eq!(
            stack.refused("alice", op, r(&elsewhere)).await.0,
            404,
            "{op}"
        );
    }
    let wrong = json!({"conversationID": group, "messageId": elsewhere, "newMessage": "x"});
    assert_eq!(stack.refused("alice", "editMessage", wrong).await.0, 404);
    assert_eq!(
        stack
            .refused(
                "alice",
                "pinMessage",
                json!({"conversationID": group, "messageId": elsewhere, "pin": true})
            )
            .await
            .0,
        404
    );
    assert_eq!(
        stack
            .refused(
                "alice",
                "reactionMessage",
                json!({"conversationID": group, "messageId": elsewhere, "emoji": "👍"})
            )
            .await
            .0,
        404
    );
    // deleteMessage: the author or an admin; a member may not delete others' messages.
    assert_eq!(
        stack.refused("bob", "deleteMessage", r(&alices)).await.1,
        "forbidden"
    );
    let bobs = send("bob", group.clone(), "bob's").await;
    stack.act("alice", "deleteMessage", r(&bobs)).await; // alice owns the group
    assert_eq!(
        stack.refused("alice", "deleteMessage", r(&bobs)).await.0,
        409
    );
    assert_eq!(
        stack
            .refused(
                "bob",
                "editMessage",
                json!({"conversationID": group, "messageId": bobs, "newMessage": "x"})
            )
            .await
            .0,
        409
    );
    assert_eq!(
        stack
            .refused(
                "bob",
                "reactionMessage",
                json!({"conversationID": group, "messageId": bobs, "emoji": "👍"})
            )
            .await
            .0,
        409
    );
    assert_eq!(
        stack
            .refused(
                "bob",
                "pinMessage",
                json!({"conversationID": group, "messageId": bobs, "pin": true})
            )
            .await
            .0,
        409
    );
    // unsendMessage: author only, within the window (2 s here).
    assert_eq!(
        stack.refused("bob", "unsendMessage", r(&alices)).await.1,
        "forbidden"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, code, _) = stack.refused("alice", "unsendMessage", r(&alices)).await;
    assert_eq!((status, code.as_str()), (422, "invalid"));
    // forwardMessage: the caller must be in both; no ephemeral, deleted or unsent messages.
    let fwd = |from: &str, to: &str, m: &str| json!({"fromConversationID": from, "toConversationID": to, "messageId": m});
    assert_eq!(
        stack
            .refused("carol", "forwardMessage", fwd(&group, &other, &alices))
            .await
            .1,
        "not_participant"
    );
    assert_eq!(
        stack
            .refused("alice", "forwardMessage", fwd(&group, &other, &ephemeral))
            .await
            .0,
        422
    );
    assert_eq!(
        stack
            .refused("bob", "forwardMessage", fwd(&group, &other, &bobs))
            .await
            .0,
        409
    );
    assert_eq!(
        stack
            .refused("alice", "forwardMessage", fwd(&group, &other, &elsewhere))
            .await
            .0,
        404
    );
    let fresh = send("alice", group.clone(), "take it back").await;
    stack.act("alice", "unsendMessage", r(&fresh)).await;
    assert_eq!(
        stack
            .refused("alice", "forwardMessage", fwd(&group, &other, &fresh))
            .await
            .0,
        404
    );
    assert_eq!(
        stack
            .refused(
                "alice",
                "editMessage",
                json!({"conversationID": group, "messageId": fresh, "newMessage": "x"})
            )
            .await
            .0,
        404
    );
    // Pins in a channel are for admins.
    assert_eq!(
        stack
            .refused(
                "bob",
                "pinMessage",
                json!({"conversationID": channel, "messageId": in_channel, "pin": true})
            )
            .await
            .1,
        "forbidden"
    );
    // Membership: admins add and remove; the owner stays; direct stays two.
    assert_eq!(
        stack
            .refused(
                "bob",
                "addParticipants",
                json!({"conversationID": group, "participants": ["dave"]})
            )
            .await
            .1,
        "forbidden"
    );
    assert_eq!(
        stack
            .refused(
                "alice",
                "addParticipants",
                json!({"conversationID": direct, "participants": ["dave"]})
            )
            .await
            .0,
        422
    );
    stack
        .act(
            "alice",
            "addAdmin",
            json!({"conversationID": group, "participantID": "bob"}),
        )
        .await;
    assert_eq!(
        stack
            .refused(
                "bob",
                "removeParticipant",
                json!({"conversationID": group, "participantID": "alice"})
            )
            .await
            .1,
        "forbidden"
    );
    assert_eq!(
        stack
            .refused(
                "bob",
                "removeAdmin",
                json!({"conversationID": group, "participantID": "alice"})
            )
            .await
            .1,
        "forbidden"
    );
    stack
        .act(
            "alice",
            "addAdmin",
            json!({"conversationID": group, "participantID": "carol"}),
        )
        .await;
    assert_eq!(
        stack
            .refused(
                "bob",
                "removeParticipant",
                json!({"conversationID": group, "participantID": "carol"})
            )
            .await
            .1,
        "forbidden"
    );
    assert_eq!(
        stack
            .refused(
                "bob",
                "removeParticipant",
                json!({"conversationID": group, "participantID": "zed"})
            )
            .await
            .0,
        404
    );
    // Removed from a channel: no rejoining alone.
    stack
        .act(
            "alice",
            "removeParticipant",
            json!({"conversationID": channel, "participantID": "bob"}),
        )
        .await;
    assert_eq!(
        stack
            .refused(
                "bob",
                "joinConversation",
                json!({"conversationID": channel})
            )
            .await
            .1,
        "forbidden"
    );
    assert_eq!(
        stack
            .refused(
                "bob",
                "sendMessage",
                json!({"conversationID": channel, "message": "hi"})
            )
            .await
            .1,
        "not_participant"
    );

    // Nothing refused left a trace: the group's messages are as sent, deletions aside.
    let texts: Vec<(Option<String>,)> = sqlx::query_as("SELECT body FROM messages WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&alices).unwrap())
        .fetch_all(&stack.db)
        .await
        .unwrap();
    assert_eq!(texts, vec![(Some("alice's".to_string()),)]);
}

/// An ephemeral message vanishes from every read at its expiry instant, before any sweep.
#[tokio::test(flavor = "multi_thread")]
async fn ephemeral_messages_vanish_from_reads_at_expiry() {
    let stack = Stack::start(StackOptions {
        fanout: false,
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let sent = stack
        .act(
            "alice",
            "sendEphemeralMessage",
            json!({"conversationID": conv, "message": "poof", "expiresIn": 1500}),
        )
        .await;
    let message = id(&sent, "messageId");
    assert!(sent["ephemeralExpiresAt"].is_string());
    let bob = stack.token("bob");
    let history = stack
        .get(Some(&bob), &format!("/api/conversations/{conv}/messages"))
        .await;
    assert_eq!(history.body["messages"][0]["message"], "poof");
    assert_eq!(
        stack.get(Some(&bob), "/api/conversations").await.body[0]["unreadCount"],
        1
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let history = stack
        .get(Some(&bob), &format!("/api/conversations/{conv}/messages"))
        .await;
    assert_eq!(history.body["messages"], json!([]));
    assert_eq!(
        stack
            .get(
                Some(&bob),
                &format!("/api/conversations/{conv}/messages/{message}")
            )
            .await
            .status,
        404
    );
    let list = stack.get(Some(&bob), "/api/conversations").await;
    assert_eq!(list.body[0]["unreadCount"], 0);
    assert_eq!(list.body[0]["lastMessage"], Value::Null);
    assert_eq!(
        stack
            .refused(
                "bob",
                "reactionMessage",
                json!({"conversationID": conv, "messageId": message, "emoji": "👍"})
            )
            .await
            .0,
        404
    );
}
