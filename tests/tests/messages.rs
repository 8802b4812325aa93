//! Every message operation through HTTP, JetStream, the worker, Postgres and the npm
//! socket.io-client: happy paths and their events, the rules (synchronously where ingress can
//! know, via command status and the actor's `error` event where only the worker can), and bad
//! input refused with nothing stored.

use std::time::Duration;

use allo_e2e::{Stack, StackOptions, id};
use serde_json::{Value, json};

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
    let allo_e2e::Refusal(status, code, command) = stack
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
    stack
        .refused(
            "alice",
            "editMessage",
            json!({"conversationID": group, "messageId": sticker, "newMessage": "x"}),
        )
        .await
        .is(422, "invalid");
    // A message id of another conversation is not found, whatever the operation.
    for op in ["deleteMessage", "unsendMessage", "messageRead"] {
        stack
            .refused("alice", op, r(&elsewhere))
            .await
            .is(404, "not_found");
    }
    let wrong = json!({"conversationID": group, "messageId": elsewhere, "newMessage": "x"});
    stack
        .refused("alice", "editMessage", wrong)
        .await
        .is(404, "not_found");
    stack
        .refused(
            "alice",
            "pinMessage",
            json!({"conversationID": group, "messageId": elsewhere, "pin": true}),
        )
        .await
        .is(404, "not_found");
    stack
        .refused(
            "alice",
            "reactionMessage",
            json!({"conversationID": group, "messageId": elsewhere, "emoji": "👍"}),
        )
        .await
        .is(404, "not_found");
    // deleteMessage: the author or an admin; a member may not delete others' messages.
    stack
        .refused("bob", "deleteMessage", r(&alices))
        .await
        .is(403, "forbidden");
    let bobs = send("bob", group.clone(), "bob's").await;
    stack.act("alice", "deleteMessage", r(&bobs)).await; // alice owns the group
    stack
        .refused("alice", "deleteMessage", r(&bobs))
        .await
        .is(409, "conflict");
    stack
        .refused(
            "bob",
            "editMessage",
            json!({"conversationID": group, "messageId": bobs, "newMessage": "x"}),
        )
        .await
        .is(409, "conflict");
    stack
        .refused(
            "bob",
            "reactionMessage",
            json!({"conversationID": group, "messageId": bobs, "emoji": "👍"}),
        )
        .await
        .is(409, "conflict");
    stack
        .refused(
            "bob",
            "pinMessage",
            json!({"conversationID": group, "messageId": bobs, "pin": true}),
        )
        .await
        .is(409, "conflict");
    // unsendMessage: author only, within the window (2 s here).
    stack
        .refused("bob", "unsendMessage", r(&alices))
        .await
        .is(403, "forbidden");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let allo_e2e::Refusal(status, code, _) =
        stack.refused("alice", "unsendMessage", r(&alices)).await;
    assert_eq!((status, code.as_str()), (422, "invalid"));
    // forwardMessage: the caller must be in both; no ephemeral, deleted or unsent messages.
    let fwd = |from: &str, to: &str, m: &str| json!({"fromConversationID": from, "toConversationID": to, "messageId": m});
    stack
        .refused("carol", "forwardMessage", fwd(&group, &other, &alices))
        .await
        .is(403, "not_participant");
    stack
        .refused("alice", "forwardMessage", fwd(&group, &other, &ephemeral))
        .await
        .is(422, "invalid");
    stack
        .refused("bob", "forwardMessage", fwd(&group, &other, &bobs))
        .await
        .is(409, "conflict");
    stack
        .refused("alice", "forwardMessage", fwd(&group, &other, &elsewhere))
        .await
        .is(404, "not_found");
    let fresh = send("alice", group.clone(), "take it back").await;
    stack.act("alice", "unsendMessage", r(&fresh)).await;
    stack
        .refused("alice", "forwardMessage", fwd(&group, &other, &fresh))
        .await
        .is(404, "not_found");
    stack
        .refused(
            "alice",
            "editMessage",
            json!({"conversationID": group, "messageId": fresh, "newMessage": "x"}),
        )
        .await
        .is(404, "not_found");
    // Pins in a channel are for admins.
    stack
        .refused(
            "bob",
            "pinMessage",
            json!({"conversationID": channel, "messageId": in_channel, "pin": true}),
        )
        .await
        .is(403, "forbidden");
    // Membership: admins add and remove; the owner stays; direct stays two.
    stack
        .refused(
            "bob",
            "addParticipants",
            json!({"conversationID": group, "participants": ["dave"]}),
        )
        .await
        .is(403, "forbidden");
    stack
        .refused(
            "alice",
            "addParticipants",
            json!({"conversationID": direct, "participants": ["dave"]}),
        )
        .await
        .is(422, "invalid");
    stack
        .act(
            "alice",
            "addAdmin",
            json!({"conversationID": group, "participantID": "bob"}),
        )
        .await;
    stack
        .refused(
            "bob",
            "removeParticipant",
            json!({"conversationID": group, "participantID": "alice"}),
        )
        .await
        .is(403, "forbidden");
    stack
        .refused(
            "bob",
            "removeAdmin",
            json!({"conversationID": group, "participantID": "alice"}),
        )
        .await
        .is(403, "forbidden");
    stack
        .act(
            "alice",
            "addAdmin",
            json!({"conversationID": group, "participantID": "carol"}),
        )
        .await;
    stack
        .refused(
            "bob",
            "removeParticipant",
            json!({"conversationID": group, "participantID": "carol"}),
        )
        .await
        .is(403, "forbidden");
    stack
        .refused(
            "bob",
            "removeParticipant",
            json!({"conversationID": group, "participantID": "zed"}),
        )
        .await
        .is(404, "not_found");
    // Removed from a channel: no rejoining alone.
    stack
        .act(
            "alice",
            "removeParticipant",
            json!({"conversationID": channel, "participantID": "bob"}),
        )
        .await;
    stack
        .refused(
            "bob",
            "joinConversation",
            json!({"conversationID": channel}),
        )
        .await
        .is(403, "forbidden");
    stack
        .refused(
            "bob",
            "sendMessage",
            json!({"conversationID": channel, "message": "hi"}),
        )
        .await
        .is(403, "not_participant");

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
            json!({"conversationID": conv, "message": "poof", "expiresIn": 3000}),
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
    // Until just past the expiry the server stated (not a fixed sleep racing it).
    let expires_at: chrono::DateTime<chrono::Utc> = sent["ephemeralExpiresAt"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("ephemeralExpiresAt");
    let left = (expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(200)).await;
    let history = stack
        .get(Some(&bob), &format!("/api/conversations/{conv}/messages"))
        .await;
    assert_eq!(history.body["messages"], json!([]));
    allo_e2e::assert_problem(
        stack
            .get(
                Some(&bob),
                &format!("/api/conversations/{conv}/messages/{message}"),
            )
            .await,
        404,
    );
    let list = stack.get(Some(&bob), "/api/conversations").await;
    assert_eq!(list.body[0]["unreadCount"], 0);
    assert_eq!(list.body[0]["lastMessage"], Value::Null);
    stack
        .refused(
            "bob",
            "reactionMessage",
            json!({"conversationID": conv, "messageId": message, "emoji": "👍"}),
        )
        .await
        .is(404, "not_found");
}

/// Two users drive a conversation through every operation, each action seen by the other's
/// real socket.io-client; then history, pins, reactions, read markers, unread counts, the event
/// log and membership are checked as each user sees them.
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_conversation_through_every_operation() {
    let stack = Stack::start(StackOptions::default()).await;
    let a = stack.create_conversation("alice", "group", &["bob"]).await;
    let b = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut alice = stack.socket("alice").await;
    let mut bob = stack.socket("bob").await;
    for conv in [&a, &b] {
        alice.join(conv).await;
        bob.join(conv).await;
    }
    let in_a = |extra: Value| {
        let mut body = extra;
        body["conversationID"] = json!(a);
        body
    };

    // The five kinds of message, each seen by the other side as `message`.
    let hello = id(
        &stack
            .act("alice", "sendMessage", in_a(json!({"message": "hello"})))
            .await,
        "messageId",
    );
    assert_eq!(bob.event_about("message", &hello).await["message"], "hello");
    let ciphertext = "U2FsdGVkX1+vupppZksvRf5pq5g5XjFRIipRkwB0K1Y=";
    let secure = stack
        .act("bob", "sendSecureMessage", in_a(json!({"message": ciphertext, "encrypted": true, "encryptionAlgorithm": "AES-256-GCM", "signature": "c2lnbmF0dXJl"})))
        .await;
    let secure = id(&secure, "messageId");
    let seen = alice.event_about("message", &secure).await;
    assert_eq!(
        (seen["message"].as_str(), seen["kind"].as_str()),
        (Some(ciphertext), Some("secure"))
    );
    assert_eq!(
        (
            seen["encrypted"].as_bool(),
            seen["encryptionAlgorithm"].as_str(),
            seen["signature"].as_str()
        ),
        (Some(true), Some("AES-256-GCM"), Some("c2lnbmF0dXJl"))
    );
    let voice = id(
        &stack
            .act(
                "alice",
                "sendVoiceMessage",
                in_a(json!({"message": "listen", "voiceUrl": "https://cdn.example.com/v/1.ogg"})),
            )
            .await,
        "messageId",
    );
    assert_eq!(
        bob.event_about("message", &voice).await["attachments"],
        json!([{"type": "voice", "url": "https://cdn.example.com/v/1.ogg"}])
    );
    let sticker = id(
        &stack
            .act(
                "bob",
                "sendSticker",
                in_a(json!({"stickerUrl": "https://cdn.example.com/s/cat.png"})),
            )
            .await,
        "messageId",
    );
    let seen = alice.event_about("message", &sticker).await;
    assert_eq!(
        seen["attachments"],
        json!([{"type": "sticker", "url": "https://cdn.example.com/s/cat.png"}])
    );
    assert_eq!(seen["message"], Value::Null);
    let fleeting = id(
        &stack
            .act(
                "alice",
                "sendEphemeralMessage",
                in_a(json!({"message": "for a minute", "expiresIn": 60_000})),
            )
            .await,
        "messageId",
    );
    assert!(bob.event_about("message", &fleeting).await["ephemeralExpiresAt"].is_string());

    // Edit, react (toggle), pin, forward, read, delete, unsend.
    let edited = stack
        .act(
            "alice",
            "editMessage",
            in_a(json!({"messageId": hello, "newMessage": "hello, bob"})),
        )
        .await;
    let seen = bob.event_about("messageEdited", &hello).await;
    assert_eq!(
        (seen["newMessage"].as_str(), seen["editedAt"].is_string()),
        (Some("hello, bob"), true)
    );
    assert_eq!(edited["newMessage"], "hello, bob");
    let react = |emoji: &str| in_a(json!({"messageId": hello, "emoji": emoji}));
    stack.act("bob", "reactionMessage", react("👍")).await;
    let seen = alice.event_about("messageReaction", &hello).await;
    assert_eq!(
        (
            seen["emoji"].as_str(),
            seen["userID"].as_str(),
            seen["action"].as_str(),
            seen["count"].as_i64()
        ),
        (Some("👍"), Some("bob"), Some("added"), Some(1))
    );
    stack.act("alice", "reactionMessage", react("👍")).await;
    stack.act("alice", "reactionMessage", react("🎉")).await;
    let again = stack.act("bob", "reactionMessage", react("👍")).await;
    assert_eq!(
        (again["action"].as_str(), again["count"].as_i64()),
        (Some("removed"), Some(1))
    );
    stack
        .act(
            "bob",
            "pinMessage",
            in_a(json!({"messageId": hello, "pin": true})),
        )
        .await;
    let seen = alice.event_about("messagePinned", &hello).await;
    assert_eq!(
        (
            seen["pinned"].as_bool(),
            seen["pinnedBy"].as_str(),
            seen["pinnedAt"].is_string()
        ),
        (Some(true), Some("bob"), true)
    );
    let forwarded = stack
        .act(
            "alice",
            "forwardMessage",
            json!({"fromConversationID": a, "toConversationID": b, "messageId": hello}),
        )
        .await;
    let copy = id(&forwarded, "messageId");
    let seen = bob.event_about("messageForwarded", &copy).await;
    assert_eq!(seen["conversationID"], b.as_str());
    assert_eq!(seen["message"], "hello, bob");
    assert_eq!(
        seen["forwardedFrom"],
        json!({"messageId": hello, "conversationID": a, "userID": "alice"})
    );
    assert!(seen["forwardedAt"].is_string());
    let read = stack
        .act("bob", "messageRead", in_a(json!({"messageId": voice})))
        .await;
    assert_eq!(read["moved"], true);
    let seen = alice.event_about("messageStatusUpdate", &voice).await;
    assert_eq!(
        (seen["status"].as_str(), seen["readBy"].as_str()),
        (Some("read"), Some("bob"))
    );
    let backwards = stack
        .act("bob", "messageRead", in_a(json!({"messageId": hello})))
        .await;
    assert_eq!(
        (
            backwards["moved"].as_bool(),
            backwards["lastReadSeq"].clone()
        ),
        (Some(false), read["lastReadSeq"].clone())
    );
    stack
        .act("bob", "deleteMessage", in_a(json!({"messageId": sticker})))
        .await;
    assert_eq!(
        alice.event_about("messageDeleted", &sticker).await["deletedBy"],
        "bob"
    );
    stack
        .act("alice", "unsendMessage", in_a(json!({"messageId": voice})))
        .await;
    bob.event_about("messageUnsent", &voice).await;

    // History as bob sees it: newest first; unsent gone; tombstone kept; states and reactions.
    let history = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{a}/messages"),
        )
        .await;
    let messages = history.body["messages"].as_array().unwrap().clone();
    let ids: Vec<String> = messages.iter().map(|m| id(m, "messageId")).collect();
    assert_eq!(
        ids,
        vec![
            fleeting.clone(),
            sticker.clone(),
            secure.clone(),
            hello.clone()
        ]
    );
    let by_id = |mid: &str| {
        messages
            .iter()
            .find(|m| m["messageId"] == mid)
            .unwrap()
            .clone()
    };
    let first = by_id(&hello);
    assert_eq!(
        (
            first["message"].as_str(),
            first["editedAt"].is_string(),
            first["pinned"].as_bool(),
            first["pinnedBy"].as_str()
        ),
        (Some("hello, bob"), true, Some(true), Some("bob"))
    );
    assert_eq!(
        first["reactions"],
        json!([{"emoji": "👍", "count": 1, "reacted": false}, {"emoji": "🎉", "count": 1, "reacted": false}])
    );
    let tomb = by_id(&sticker);
    assert_eq!(
        (
            tomb["status"].as_str(),
            tomb["message"].clone(),
            tomb["attachments"].clone()
        ),
        (Some("deleted"), Value::Null, json!([]))
    );
    assert_eq!(by_id(&secure)["message"], ciphertext);
    // Reactions as alice sees them, one message by id, pins.
    let one = stack
        .get(
            Some(&stack.token("alice")),
            &format!("/api/conversations/{a}/messages/{hello}"),
        )
        .await;
    assert_eq!(
        one.body["reactions"],
        json!([{"emoji": "👍", "count": 1, "reacted": true}, {"emoji": "🎉", "count": 1, "reacted": true}])
    );
    let pins = stack
        .get(
            Some(&stack.token("alice")),
            &format!("/api/conversations/{a}/pins"),
        )
        .await;
    assert_eq!(
        pins.body
            .as_array()
            .map(|p| p.iter().map(|m| id(m, "messageId")).collect::<Vec<_>>()),
        Some(vec![hello.clone()])
    );
    allo_e2e::assert_problem(
        stack
            .get(
                Some(&stack.token("alice")),
                &format!("/api/conversations/{a}/messages/{voice}"),
            )
            .await,
        404,
    );
    // Read markers and unread counts: bob read up to the voice message; after it, alice sent
    // only the ephemeral one. Alice read nothing; bob's visible, undeleted messages: the secure one.
    let unread = |user: &'static str| {
        let stack = &stack;
        let a = a.clone();
        async move {
            let list = stack
                .get(Some(&stack.token(user)), "/api/conversations")
                .await;
            list.body
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["conversationID"] == a.as_str())
                .unwrap()
                .clone()
        }
    };
    let bobs = unread("bob").await;
    assert_eq!(
        (bobs["unreadCount"].as_i64(), bobs["lastReadSeq"].clone()),
        (Some(1), read["lastReadSeq"].clone())
    );
    assert_eq!(bobs["lastMessage"]["messageId"], fleeting.as_str());
    assert_eq!(unread("alice").await["unreadCount"], 1);
    // The event log keeps every change in seq order, with unsent content scrubbed.
    let log = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{a}/events?after=0"),
        )
        .await;
    let events = log.body["events"].as_array().unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let voice_event = events
        .iter()
        .find(|e| e["type"] == "message" && e["data"]["messageId"] == voice.as_str())
        .unwrap();
    assert_eq!(voice_event["data"]["message"], Value::Null);
    assert_eq!(voice_event["data"]["attachments"], json!([]));

    // Membership: add, promote, remove, leave with handover.
    stack
        .act(
            "alice",
            "addParticipants",
            json!({"conversationID": a, "participants": ["carol"]}),
        )
        .await;
    let joined = bob
        .next_matching(
            "participantJoined",
            |d| d["userID"] == "carol",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(joined["addedBy"], "alice");
    stack
        .act(
            "alice",
            "addAdmin",
            json!({"conversationID": a, "participantID": "bob"}),
        )
        .await;
    let promoted = alice
        .next_matching(
            "participantRoleChanged",
            |d| d["userID"] == "bob",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(promoted["role"], "admin");
    stack
        .act(
            "bob",
            "removeParticipant",
            json!({"conversationID": a, "participantID": "carol"}),
        )
        .await;
    let removed = alice
        .next_matching(
            "participantRemoved",
            |d| d["userID"] == "carol",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(removed["removedBy"], "bob");
    allo_e2e::assert_problem(
        stack
            .get(
                Some(&stack.token("carol")),
                &format!("/api/conversations/{a}/messages"),
            )
            .await,
        403,
    );
    stack
        .act("alice", "leaveConversation", json!({"conversationID": a}))
        .await;
    let left = bob
        .next_matching(
            "participantLeft",
            |d| d["userID"] == "alice",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(left["newOwner"], "bob");
    let conversation = stack
        .get(
            Some(&stack.token("bob")),
            &format!("/api/conversations/{a}"),
        )
        .await;
    assert_eq!(conversation.body["owner"], "bob");
    assert_eq!(
        conversation.body["participants"].as_array().map(Vec::len),
        Some(1)
    );
    allo_e2e::assert_problem(
        stack
            .get(
                Some(&stack.token("alice")),
                &format!("/api/conversations/{a}"),
            )
            .await,
        403,
    );
    stack
        .refused("alice", "joinConversation", json!({"conversationID": a}))
        .await
        .is(403, "forbidden");
    // The OpenAPI document is served.
    let doc = stack.get(None, "/api/openapi.json").await;
    assert_eq!(
        doc.body["paths"]["/api/chat/forwardMessage"]["post"]["operationId"],
        "forwardMessage"
    );
}
