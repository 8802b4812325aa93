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

/// Per fan-out connection (by node and client id: ids repeat across nodes): its subscriptions to `<prefix>.evt.…` by sid
/// (subject, messages delivered on it), and the messages the connection received in all.
type Counts = HashMap<(String, u64), (HashMap<String, (String, u64)>, u64)>;

async fn fanout_counts(fleet: &Fleet, prefix: &str) -> Counts {
    let mut counts = Counts::new();
    for conn in fleet.nats.connections().await {
        if conn["name"] != "allo-fanout" {
            continue;
        }
        let mut subs = HashMap::new();
        for sub in conn["subscriptions_list_detail"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let subject = sub["subject"].as_str().unwrap_or("");
            if subject.starts_with(&format!("{prefix}.evt.")) {
                let sid = sub["sid"].as_str().unwrap_or("").to_string();
                subs.insert(
                    sid,
                    (subject.to_string(), sub["msgs"].as_u64().unwrap_or(0)),
                );
            }
        }
        let node = conn["server_id"].as_str().expect("server_id").to_string();
        let cid = conn["cid"].as_u64().expect("cid");
        counts.insert((node, cid), (subs, conn["out_msgs"].as_u64().unwrap_or(0)));
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
    loop {
        let counts = fanout_counts(&fleet, &prefix).await;
        let subscribed: usize = counts.values().map(|(c, _)| c.len()).sum();
        if counts.len() == 2 && subscribed == CONVERSATIONS {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "joins: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The counts start once NATS has delivered everything committed so far (the conversations'
    // creation events are relayed after the joins may have subscribed): the outbox is empty and
    // two readings half a second apart agree.
    fleet
        .stack
        .wait_count(
            "SELECT (count(*) = 0)::int::bigint FROM event_outbox",
            1,
            Duration::from_secs(30),
        )
        .await;
    let mut before = fanout_counts(&fleet, &prefix).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = fanout_counts(&fleet, &prefix).await;
        if again == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counts never settled"
        );
        before = again;
    }
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
    // Until every socket has seen its conversation's last event (NATS has delivered them
    // all), for up to 30 s; a socket still behind fails the test after the counts are judged.
    let last: HashMap<String, i64> = last_seqs(&fleet.stack.db).await;
    let caught_up =
        |i: usize| sockets[i].last_seq(&conversations[i / 2]) >= last[&conversations[i / 2]];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(0..sockets.len()).all(caught_up) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = fanout_counts(&fleet, &prefix).await;

    let events: HashMap<&String, u64> = conversations
        .iter()
        .map(|c| (c, (last[c] - floor[c]) as u64))
        .collect();
    let all_events: u64 = events.values().sum();
    let mut report = Vec::new();
    for (connection, (subs, out_after)) in &after {
        let cid = format!("{}/{}", connection.0, connection.1);
        let (subs_before, out_before) = before.get(connection).expect("same connections");
        let received = out_after - out_before;
        let on_subs: u64 = subs
            .iter()
            .map(|(sid, (_, n))| n - subs_before.get(sid).map_or(0, |(_, n)| *n))
            .sum();
        // The conversations it subscribed to, by subject, and their events.
        let joined: Vec<usize> = subs
            .values()
            .filter_map(|(subject, _)| {
                conversations
                    .iter()
                    .position(|c| *subject == format!("{prefix}.evt.{c}.>"))
            })
            .collect();
        let own: u64 = joined.iter().map(|k| events[&conversations[*k]]).sum();
        // What NATS delivered to the connection is its conversations' events and little else
        // (presence signals, JetStream API replies), nothing like the other half's events...
        assert!(
            received < own + (all_events - own) / 10,
            "connection {cid} received {received} messages for {own} events of its own \
             ({all_events} in all)"
        );
        // ...each of them once, on its subscription...
        assert_eq!(
            on_subs, own,
            "connection {cid}: events on its subscriptions"
        );
        // ...and it subscribed to exactly one half: the conversations its sockets joined.
        let halves: std::collections::HashSet<usize> = joined.iter().map(|k| k % 2).collect();
        assert_eq!(
            (joined.len(), subs.len(), halves.len()),
            (CONVERSATIONS / 2, CONVERSATIONS / 2, 1),
            "connection {cid}: {subs:?}"
        );
        report.push(json!({"connection": cid, "conversations": joined.len(),
            "own_events": own, "on_conversation_subscriptions": on_subs,
            "messages_received": received, "events_in_all": all_events}));
    }
    assert_eq!(report.len(), 2, "two fan-out connections");
    let behind: Vec<String> = (0..sockets.len())
        .filter(|i| !caught_up(*i))
        .map(|i| {
            let conv = &conversations[i / 2];
            let log = sockets[i].log.lock().expect("socket log");
            format!(
                "socket {i} (replica {}): seq {} of {}, {} joins acked, {} deliveries, \
                 sessions ended: {:?}",
                (i / 2) % 2,
                log.last_seq.get(conv).copied().unwrap_or(0),
                last[conv],
                log.joined,
                log.deliveries.len(),
                log.session_ends
            )
        })
        .collect();
    assert!(
        behind.is_empty(),
        "sockets behind their conversations: {behind:#?}"
    );
    println!("interest-based fan-out (counted by nats-server /connz):");
    for line in report {
        println!("  {line}");
    }
}
