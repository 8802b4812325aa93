//! Interest-based fan-out, measured by NATS (issue 12): with two fan-out replicas and the
//! conversations split between them (every socket of a conversation on one replica), each
//! replica's NATS connection receives only the events of the conversations its sockets
//! joined. Counted by nats-server's monitoring (`/connz?subs=detail`: messages delivered per
//! subscription and per connection), not by Allo, against the events Postgres committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use allo_e2e::chaos::{Fleet, FleetOptions};
use allo_e2e::chaos_table::last_seqs;
use allo_e2e::sio::Observer;
use serde_json::json;

const CONVERSATIONS: usize = 8;
const MESSAGES_PER_CONVERSATION: usize = 40;

/// Per fan-out connection (by client id): (messages on conversation subscriptions by
/// conversation, messages the connection received in all).
type Counts = HashMap<u64, (HashMap<String, u64>, u64)>;

async fn fanout_counts(fleet: &Fleet, prefix: &str) -> Counts {
    let mut counts = Counts::new();
    for conn in fleet.nats.connections().await {
        if conn["name"] != "allo-fanout" {
            continue;
        }
        let mut per_conversation = HashMap::new();
        for sub in conn["subscriptions_list_detail"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let subject = sub["subject"].as_str().unwrap_or("");
            if let Some(rest) = subject.strip_prefix(&format!("{prefix}.evt."))
                && let Some(conv) = rest.strip_suffix(".>")
            {
                per_conversation.insert(conv.to_string(), sub["msgs"].as_u64().unwrap_or(0));
            }
        }
        let cid = conn["cid"].as_u64().expect("cid");
        counts.insert(
            cid,
            (per_conversation, conn["out_msgs"].as_u64().unwrap_or(0)),
        );
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn each_fanout_replica_receives_only_its_conversations_events() {
    let mut fleet = Fleet::start(FleetOptions {
        apis: 1,
        workers_per_pool: 1,
        ..Default::default()
    })
    .await;
    fleet.stack.api_url = fleet.api_urls[0].clone();
    let prefix = fleet.stack.settings.subject_prefix.clone();
    let fanouts = Arc::new(fleet.fanout_urls.clone());
    let mut conversations = Vec::new();
    let mut sockets = Vec::new();
    for k in 0..CONVERSATIONS {
        let (a, b) = (format!("a{k}"), format!("b{k}"));
        let conv = fleet.stack.create_conversation(&a, "group", &[&b]).await;
        for user in [&a, &b] {
            let joins = HashMap::from([(conv.clone(), 0)]);
            sockets.push(Observer::spawn(
                fanouts.clone(),
                k % 2,
                fleet.stack.token(user),
                joins,
            ));
        }
        conversations.push(conv);
    }
    // Joined: each replica subscribed to its conversations.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let counts = fanout_counts(&fleet, &prefix).await;
        let subscribed: usize = counts.values().map(|(c, _)| c.len()).sum();
        if counts.len() == 2 && subscribed == CONVERSATIONS {
            break counts;
        }
        assert!(tokio::time::Instant::now() < deadline, "joins: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let floor: HashMap<String, i64> = last_seqs(&fleet.stack.db).await;

    for i in 0..MESSAGES_PER_CONVERSATION {
        for (k, conv) in conversations.iter().enumerate() {
            let reply = fleet
                .stack
                .post(
                    &fleet.stack.token(&format!("a{k}")),
                    "sendMessage",
                    json!({"conversationID": conv, "message": format!("m{i}")}),
                )
                .await;
            assert_eq!(reply.status, 202, "{:?}", reply.body);
        }
    }
    let total = (CONVERSATIONS * MESSAGES_PER_CONVERSATION) as i64;
    fleet
        .stack
        .wait_count(
            "SELECT count(*) FROM messages",
            total,
            Duration::from_secs(60),
        )
        .await;
    // Every socket has seen its conversation's last event, so NATS has delivered them all.
    let last: HashMap<String, i64> = last_seqs(&fleet.stack.db).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (i, socket) in sockets.iter().enumerate() {
        let conv = &conversations[i / 2];
        while socket.last_seq(conv) < last[conv] {
            assert!(tokio::time::Instant::now() < deadline, "socket {i} behind");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let after = fanout_counts(&fleet, &prefix).await;

    let events: HashMap<&String, u64> = conversations
        .iter()
        .map(|c| (c, (last[c] - floor[c]) as u64))
        .collect();
    let all_events: u64 = events.values().sum();
    let mut report = Vec::new();
    for (cid, (subs, out_after)) in &after {
        let (subs_before, out_before) = before.get(cid).expect("same connections");
        let own: u64 = subs.keys().map(|c| events[c]).sum();
        let on_subs: u64 = subs
            .iter()
            .map(|(c, n)| n - subs_before.get(c).copied().unwrap_or(0))
            .sum();
        let received = out_after - out_before;
        // Its subscriptions are exactly the conversations its sockets joined: one half.
        let halves: std::collections::HashSet<usize> = subs
            .keys()
            .map(|c| conversations.iter().position(|x| x == c).expect("ours") % 2)
            .collect();
        assert_eq!(
            (subs.len(), halves.len()),
            (CONVERSATIONS / 2, 1),
            "connection {cid}: {subs:?}"
        );
        // ...each of their events arrived once on them...
        assert_eq!(
            on_subs, own,
            "connection {cid}: events on its subscriptions"
        );
        // ...and nothing else of note: what else reached the connection (other replicas'
        // presence signals, JetStream API replies) is small beside the other half's events.
        assert!(
            received < own + (all_events - own) / 10,
            "connection {cid} received {received} messages for {own} events of its own \
             ({all_events} in all)"
        );
        report.push(json!({"connection": cid, "conversations": subs.len(),
            "own_events": own, "on_conversation_subscriptions": on_subs,
            "messages_received": received, "events_in_all": all_events}));
    }
    assert_eq!(report.len(), 2, "two fan-out connections");
    println!("interest-based fan-out (counted by nats-server /connz):");
    for line in report {
        println!("  {line}");
    }
}
