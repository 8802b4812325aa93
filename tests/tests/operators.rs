//! What operators handle (issue 14): dead letters listed, shown, replayed once after a fix,
//! and discarded, with the real `allo-workers dead-letters` commands.

use std::time::Duration;

use allo_e2e::{Stack, StackOptions, id};
use serde_json::{Value, json};

async fn tool(stack: &Stack, args: &[&str]) -> Value {
    let (ok, out, err) = stack.run_tool("allo-workers", args).await;
    assert!(ok, "allo-workers {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// A poison command (Postgres refuses its row) is dead-lettered; the operator reads it, fixes
/// the cause, replays it once: it is applied exactly once, in order with the rest, and its
/// sender reads `committed`. Another one is discarded and stays rejected for its sender.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_replayed_once_after_a_fix_or_discarded() {
    let stack = Stack::start(StackOptions {
        fanout: false,
        env: vec![("ALLO_JETSTREAM__MAX_DELIVER".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    sqlx::raw_sql(
        "CREATE FUNCTION doom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.body LIKE 'doomed%' THEN RAISE EXCEPTION 'doomed by the test'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER doom BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION doom();",
    )
    .execute(&stack.db)
    .await
    .expect("trigger");
    let alice = stack.token("alice");
    let send = |text: &str| json!({"conversationID": conv, "message": text});
    let mut poison = Vec::new();
    for text in ["doomed one", "doomed two"] {
        let sent = stack.post(&alice, "sendMessage", send(text)).await;
        assert_eq!(sent.status, 202, "{:?}", sent.body);
        let command = id(&sent.body, "commandId");
        let outcome = stack.outcome(&alice, &command).await;
        assert_eq!(outcome["code"], "dead_lettered", "{outcome}");
        poison.push(command);
    }

    let listed = tool(&stack, &["dead-letters", "list"]).await;
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    for letter in listed {
        assert_eq!(letter["operation"], "sendMessage");
        // Two deliveries ran it; the third set it aside without running it.
        assert_eq!(letter["deliveries"], 3);
        assert_eq!(letter["error"], "failed on 2 deliveries");
        assert!(letter.get("command").is_none(), "list carries no bodies");
    }
    let shown = tool(&stack, &["dead-letters", "show", &poison[0]]).await;
    assert_eq!(
        shown["command"]["command"]["body"]["content"]["message"], "doomed one",
        "{shown}"
    );

    // The fix, then the replay: applied once, after what was sent before it.
    sqlx::raw_sql("DROP TRIGGER doom ON messages")
        .execute(&stack.db)
        .await
        .expect("fix");
    let replayed = tool(&stack, &["dead-letters", "replay", &poison[0]]).await;
    assert_eq!(replayed["status"], "replayed");
    let outcome = stack.outcome(&alice, &poison[0]).await;
    assert_eq!(outcome["status"], "committed", "{outcome}");
    // Twice is once: the second replay finds nothing and changes nothing.
    let (ok, _, err) = stack
        .run_tool("allo-workers", &["dead-letters", "replay", &poison[0]])
        .await;
    assert!(!ok && err.contains("no dead letter"), "{err}");
    stack
        .act("alice", "sendMessage", send("after the fix"))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM messages WHERE conversation_id = $1::uuid ORDER BY seq",
    )
    .bind(&conv)
    .fetch_all(&stack.db)
    .await
    .expect("messages");
    assert_eq!(bodies, ["doomed one", "after the fix"]);

    // Discarded: gone from the list, still rejected for its sender, never applied.
    let discarded = tool(&stack, &["dead-letters", "discard", &poison[1]]).await;
    assert_eq!(discarded["status"], "discarded");
    assert_eq!(tool(&stack, &["dead-letters", "list"]).await, json!([]));
    let outcome = stack.outcome(&alice, &poison[1]).await;
    assert_eq!(outcome["code"], "dead_lettered", "{outcome}");
}
