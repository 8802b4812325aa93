//! Every event Allo emits matches its JSON Schema in `docs/events/` (the contract backend
//! subscribers code against): one schema per type, strict where the shape is fixed.
//!
//! Drives every operation that emits something (and a refusal, reports and moderation for the
//! user and moderator notices), captures each message Allo publishes under its prefix as it is
//! published (a core NATS subscription: erasure takes some off the stream within a second),
//! and validates each against `docs/events/<type>.schema.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use allo_e2e::{Stack, StackOptions, id, workspace_root};
use futures::StreamExt;
use serde_json::{Value, json};

/// The types a notice (not a conversation event) has: `<p>.usr.*.error`, `<p>.mod.*`.
const NOTICES: [&str; 3] = ["error", "messageReported", "reportResolved"];

/// Every event type of `allo_common::event::EventType`.
fn event_types() -> Vec<&'static str> {
    use allo_common::event::EventType as E;
    [
        E::Message,
        E::ConversationCreated,
        E::ParticipantJoined,
        E::ParticipantLeft,
        E::ParticipantRemoved,
        E::ParticipantRoleChanged,
        E::MessageEdited,
        E::MessageDeleted,
        E::MessageUnsent,
        E::MessageForwarded,
        E::MessageStatusUpdate,
        E::MessagePinned,
        E::MessageReaction,
        E::PollVoted,
        E::PollClosed,
        E::MessageRestored,
        E::HistoryVisibilityChanged,
    ]
    .into_iter()
    .map(|e| e.as_str())
    .collect()
}

/// The validator of each schema file in `docs/events/`, by the type it is named after.
fn schemas() -> BTreeMap<String, jsonschema::Validator> {
    let dir = workspace_root().join("docs/events");
    let mut schemas = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("docs/events") {
        let path = entry.expect("entry").path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".schema.json"))
        else {
            continue;
        };
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        schemas.insert(name.to_string(), validator);
    }
    schemas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_emitted_event_matches_its_schema() {
    let schemas = schemas();
    let stack = Stack::start(StackOptions {
        fanout: false,
        ..Default::default()
    })
    .await;
    let prefix = stack.settings.subject_prefix.clone();
    let mut published = stack
        .nats
        .subscribe(format!("{prefix}.>"))
        .await
        .expect("subscribe");
    stack.nats.flush().await.expect("flush");

    drive_every_operation(&stack).await;

    // Every event in the log was published (and so captured), plus the notices.
    let logged: BTreeSet<String> = sqlx::query_scalar::<_, String>("SELECT id::text FROM events")
        .fetch_all(&stack.db)
        .await
        .expect("events")
        .into_iter()
        .collect();
    let mut seen_events = BTreeSet::new();
    let mut captured: Vec<(String, Value)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !logged.is_subset(&seen_events) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(msg)) = tokio::time::timeout(left, published.next()).await else {
            let missing: Vec<_> = logged.difference(&seen_events).collect();
            panic!("events never published: {missing:?}");
        };
        take(&prefix, msg, &mut captured, &mut seen_events);
    }
    // Notices published after the last event.
    while let Ok(Some(msg)) =
        tokio::time::timeout(Duration::from_millis(500), published.next()).await
    {
        take(&prefix, msg, &mut captured, &mut seen_events);
    }
    let dump = stack.log_dir().join("events.jsonl");
    let lines: Vec<String> = captured
        .iter()
        .map(|(subject, v)| json!({"subject": subject, "payload": v}).to_string())
        .collect();
    let _ = std::fs::write(&dump, lines.join("\n"));

    let mut failures = Vec::new();
    let mut types = BTreeSet::new();
    for (subject, payload) in &captured {
        let kind = payload["type"].as_str().unwrap_or("<no type>").to_string();
        types.insert(kind.clone());
        let Some(validator) = schemas.get(&kind) else {
            failures.push(format!(
                "{subject}: no schema docs/events/{kind}.schema.json"
            ));
            continue;
        };
        for error in validator.iter_errors(payload) {
            failures.push(format!(
                "{subject}: {kind} at {}: {error}",
                error.instance_path()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} schema failures (events in {}):\n{}",
        failures.len(),
        dump.display(),
        failures.join("\n")
    );
    // The drive reached every type, so every schema was checked against the real thing.
    let expected: BTreeSet<String> = event_types()
        .into_iter()
        .chain(NOTICES)
        .map(String::from)
        .collect();
    assert_eq!(types, expected, "types emitted vs every type");
    let documented: BTreeSet<String> = schemas.keys().cloned().collect();
    assert_eq!(documented, expected, "schemas in docs/events vs every type");
}

fn take(
    prefix: &str,
    msg: async_nats::Message,
    captured: &mut Vec<(String, Value)>,
    seen_events: &mut BTreeSet<String>,
) {
    let subject = msg.subject.to_string();
    let kind = subject
        .strip_prefix(prefix)
        .and_then(|s| s.split('.').nth(1));
    if !matches!(kind, Some("evt" | "usr" | "mod")) {
        return; // commands, rate leases, outcomes, signals: not for subscribers
    }
    let payload: Value =
        serde_json::from_slice(&msg.payload).unwrap_or_else(|e| panic!("{subject}: not JSON: {e}"));
    if let Some(event_id) = payload["eventId"].as_str() {
        seen_events.insert(event_id.to_string());
    }
    captured.push((subject, payload));
}

/// Runs every operation that emits an event or a notice, with the variants that change a
/// payload's shape (reasons of a deletion, a leaving owner, an admin's add, a scheduled send).
async fn drive_every_operation(stack: &Stack) {
    let group = stack
        .create_conversation("alice", "group", &["bob", "carol", "dave", "erin"])
        .await;
    let direct = stack.create_conversation("alice", "direct", &["bob"]).await;
    let channel = stack.create_conversation("alice", "channel", &[]).await;
    let c = |extra: Value| {
        let mut body = json!({"conversationID": group});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().cloned().unwrap_or_default());
        body
    };
    // Membership and settings.
    stack
        .act(
            "zed",
            "joinConversation",
            json!({"conversationID": channel}),
        )
        .await;
    stack
        .act(
            "alice",
            "leaveConversation",
            json!({"conversationID": channel}),
        )
        .await;
    stack
        .act(
            "alice",
            "addParticipants",
            c(json!({"participants": ["frank"]})),
        )
        .await;
    stack
        .act("alice", "addAdmin", c(json!({"participantID": "bob"})))
        .await;
    stack
        .act("alice", "removeAdmin", c(json!({"participantID": "bob"})))
        .await;
    stack
        .act(
            "alice",
            "removeParticipant",
            c(json!({"participantID": "frank"})),
        )
        .await;
    stack
        .act(
            "alice",
            "setHistoryVisibility",
            c(json!({"historyVisibility": "shared"})),
        )
        .await;
    // Messages of every kind.
    let m = |r: Value| id(&r, "messageId");
    let text = m(stack
        .act("alice", "sendMessage", c(json!({"message": "hello"})))
        .await);
    stack
        .act(
            "bob",
            "sendSecureMessage",
            c(json!({"message": "c2VjcmV0", "encrypted": true, "encryptionAlgorithm": "AES-256-GCM", "signature": "c2ln"})),
        )
        .await;
    stack
        .act(
            "bob",
            "sendVoiceMessage",
            c(json!({"voiceUrl": "https://cdn.example/v.ogg"})),
        )
        .await;
    stack
        .act(
            "bob",
            "sendSticker",
            c(json!({"stickerUrl": "https://cdn.example/s.png"})),
        )
        .await;
    stack
        .act(
            "carol",
            "sendEphemeralMessage",
            c(json!({"message": "soon gone", "expiresIn": 1000})),
        )
        .await;
    let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    stack
        .act(
            "dave",
            "scheduleMessage",
            c(json!({"message": "on time", "scheduledTime": past})),
        )
        .await;
    // What happens to a message.
    stack
        .act(
            "alice",
            "editMessage",
            c(json!({"messageId": text, "newMessage": "hello, all"})),
        )
        .await;
    stack
        .act(
            "bob",
            "reactionMessage",
            c(json!({"messageId": text, "emoji": "👍"})),
        )
        .await;
    stack
        .act(
            "bob",
            "reactionMessage",
            c(json!({"messageId": text, "emoji": "👍"})),
        )
        .await;
    stack
        .act(
            "alice",
            "pinMessage",
            c(json!({"messageId": text, "pin": true})),
        )
        .await;
    stack
        .act(
            "alice",
            "pinMessage",
            c(json!({"messageId": text, "pin": false})),
        )
        .await;
    stack
        .act("bob", "messageRead", c(json!({"messageId": text})))
        .await;
    stack
        .act(
            "alice",
            "forwardMessage",
            json!({"fromConversationID": group, "toConversationID": direct, "messageId": text}),
        )
        .await;
    let deleted = m(stack
        .act("carol", "sendMessage", c(json!({"message": "oops"})))
        .await);
    stack
        .act("carol", "deleteMessage", c(json!({"messageId": deleted})))
        .await;
    let unsent = m(stack
        .act("carol", "sendMessage", c(json!({"message": "unsay"})))
        .await);
    stack
        .act("carol", "unsendMessage", c(json!({"messageId": unsent})))
        .await;
    // Polls.
    let poll = m(stack
        .act(
            "alice",
            "createPoll",
            c(json!({"question": "Lunch?", "options": ["pizza", "sushi"]})),
        )
        .await);
    stack
        .act(
            "bob",
            "votePoll",
            c(json!({"messageId": poll, "optionIndex": 1})),
        )
        .await;
    stack
        .act("alice", "closePoll", c(json!({"messageId": poll})))
        .await;
    // Reports: hidden at the threshold (3), restored, reported again and removed.
    let mia = stack.token_with_roles("mia", &["moderator"]);
    let bad = m(stack
        .act("erin", "sendMessage", c(json!({"message": "spam spam"})))
        .await);
    for reporter in ["bob", "carol", "dave"] {
        stack
            .act(
                reporter,
                "reportMessage",
                c(json!({"messageId": bad, "reason": "spam"})),
            )
            .await;
    }
    let restored = stack
        .post_wait(&mia, "restoreMessage", c(json!({"messageId": bad})))
        .await;
    assert_eq!(restored.status, 200, "{:?}", restored.body);
    let report = stack
        .act(
            "alice",
            "reportMessage",
            c(json!({"messageId": bad, "reason": "other", "details": "again"})),
        )
        .await;
    let removed = stack
        .post_wait(
            &mia,
            "resolveReport",
            json!({"reportId": id(&report, "reportId"), "action": "remove"}),
        )
        .await;
    assert_eq!(removed.status, 200, "{:?}", removed.body);
    // A refusal: an `error` notice to its sender.
    stack
        .refused("zed", "sendMessage", c(json!({"message": "let me in"})))
        .await;
    // The ephemeral message expires (the sweeper's `messageDeleted`, reason `expired`).
    stack
        .wait_count(
            "SELECT count(*) FROM messages WHERE deleted_reason = 'expired'",
            1,
            Duration::from_secs(15),
        )
        .await;
}
