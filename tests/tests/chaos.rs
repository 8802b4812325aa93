//! The chaos run (issue 12): users send commands over HTTP and sockets into a scaled-out
//! deployment (3 NATS nodes with R3 streams, 2 API, 2 fan-out and 2 processes of each worker
//! pool, one Postgres) while, in turn: a worker of each pool is SIGKILLed, a fan-out replica
//! is SIGKILLed (its sockets resume on the other), an API replica is SIGKILLed (clients retry
//! with their Idempotency-Key), Postgres is stopped and started, a NATS node is SIGKILLed and
//! brought back, and every process is SIGTERMed and restarted in turn (rolling restart).
//! It ends with one table computed from what the clients saw and what Postgres holds, and
//! asserts nothing was lost, applied twice, skipped, repeated or reordered on a socket.
//!
//! Size from the environment. The default is the bounded form CI runs (about 3 minutes on
//! 2 cores); the long form: `ALLO_CHAOS_USERS=60 ALLO_CHAOS_COMMANDS=10000 ALLO_CHAOS_RATE=60`.
//! - `ALLO_CHAOS_USERS` (50): users, in groups of five per conversation; one in five sends
//!   its messages over its socket.
//! - `ALLO_CHAOS_COMMANDS` (1500): the least number of commands sent; the load goes on
//!   through every fault and stops once this many were sent.
//! - `ALLO_CHAOS_RATE` (30): commands per second, all users together (open loop: each user
//!   sends on a schedule, not when its last command returned).
//! - `ALLO_CHAOS_HOLD_SECS` (3): how long each fault lasts before it is repaired.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use allo_e2e::chaos::{Fleet, FleetOptions, POOLS};
use allo_e2e::chaos_load::{Record, User, send_loop};
use allo_e2e::chaos_table::{Phase, Table, accepted_ids, last_seqs, settled, sockets_caught_up};
use allo_e2e::sio::Observer;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Ends a fault: waits until every command accepted so far is settled in Postgres. Its
/// window for latencies is from `start` to that moment.
async fn phase(fleet: &Fleet, record: &Record, name: &str, start: Instant) -> Phase {
    let healed = Instant::now();
    let ids = accepted_ids(record);
    let drained = settled(&fleet.stack.db, &ids, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| {
            eprintln!("{name}: not drained within 60 s");
            Instant::now()
        });
    println!(
        "fault `{name}`: held {:.1} s, drained {:.1} s after repair ({} accepted so far)",
        (healed - start).as_secs_f64(),
        (drained - healed).as_secs_f64(),
        ids.len()
    );
    // A quiet gap before the next fault: a command first tried at the end of this window is
    // done before the next fault begins, so its latency is not charged to this one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Phase {
        name: name.into(),
        start,
        healed,
        drained,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chaos_run_loses_nothing() {
    let users_n: usize = setting("ALLO_CHAOS_USERS", 50);
    let commands: usize = setting("ALLO_CHAOS_COMMANDS", 1500);
    let rate: f64 = setting("ALLO_CHAOS_RATE", 30.0);
    let hold = Duration::from_secs(setting("ALLO_CHAOS_HOLD_SECS", 3));
    let mut fleet = Fleet::start(FleetOptions::default()).await;
    fleet.stack.api_url = fleet.api_urls[0].clone();

    // Conversations of five; each user's socket starts on replica (conversation % 2).
    let names: Vec<String> = (0..users_n).map(|i| format!("u{i:03}")).collect();
    let mut conversations = Vec::new();
    for group in names.chunks(5) {
        let others: Vec<&str> = group[1..].iter().map(String::as_str).collect();
        let conv = fleet
            .stack
            .create_conversation(&group[0], "group", &others)
            .await;
        conversations.push(conv);
    }
    let floors: HashMap<String, i64> = last_seqs(&fleet.stack.db).await;
    let fanouts = Arc::new(fleet.fanout_urls.clone());
    let users: Vec<Arc<User>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let conversation = conversations[i / 5].clone();
            let token = fleet.stack.token(name);
            let joins = HashMap::from([(conversation.clone(), floors[&conversation])]);
            Arc::new(User {
                name: name.clone(),
                socket: Observer::spawn(fanouts.clone(), i / 5, token.clone(), joins),
                token,
                conversation,
                via_socket: i % 5 == 4,
            })
        })
        .collect();

    let record = Arc::new(Record::default());
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_secs_f64(users_n as f64 / rate);
    let apis = Arc::new(fleet.api_urls.clone());
    let senders: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let (u, apis, record, stop) = (u.clone(), apis.clone(), record.clone(), stop.clone());
            let pace = (every.mul_f64(i as f64 / users_n as f64), every);
            tokio::spawn(async move { send_loop(u, apis, pace, record, stop).await })
        })
        .collect();
    let run_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut phases = Vec::new();
    let start = Instant::now();
    tokio::time::sleep(hold).await;
    phases.push(phase(&fleet, &record, "none (baseline)", start).await);

    let start = Instant::now();
    for pool in POOLS {
        fleet.kill_worker_holding(pool).await;
    }
    tokio::time::sleep(hold).await;
    for pool in POOLS {
        fleet.start_worker(pool).await;
    }
    phases.push(phase(&fleet, &record, "SIGKILL a worker of each pool", start).await);

    let start = Instant::now();
    fleet.kill("fanout-0").await;
    tokio::time::sleep(hold).await;
    fleet.restart("fanout-0").await;
    phases.push(phase(&fleet, &record, "SIGKILL fan-out replica 0", start).await);

    let start = Instant::now();
    fleet.kill("api-0").await;
    tokio::time::sleep(hold).await;
    fleet.restart("api-0").await;
    phases.push(phase(&fleet, &record, "SIGKILL API replica 0", start).await);

    let start = Instant::now();
    fleet.postgres.stop().await;
    tokio::time::sleep(hold).await;
    fleet.postgres.resume().await;
    phases.push(phase(&fleet, &record, "Postgres stopped and started", start).await);

    let start = Instant::now();
    fleet.nats.kill(0).await;
    tokio::time::sleep(hold).await;
    fleet.nats.resume(0).await;
    fleet.nats.wait_healthy(0).await;
    phases.push(phase(&fleet, &record, "SIGKILL NATS node 0 (of 3)", start).await);

    let start = Instant::now();
    let mut unclean = Vec::new();
    for name in fleet.replicas() {
        if !fleet.terminate(&name).await {
            unclean.push(name.clone());
        }
        fleet.restart(&name).await;
    }
    for pool in POOLS {
        for _ in 0..2 {
            if !fleet.terminate_worker(pool).await {
                unclean.push(format!("a {pool} worker"));
            }
            fleet.start_worker(pool).await;
        }
    }
    phases.push(phase(&fleet, &record, "rolling restart (SIGTERM each)", start).await);

    while record.sent.lock().expect("record").len() < commands {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.expect("sender");
    }
    let load_secs = run_started.elapsed().as_secs_f64();
    let ids = accepted_ids(&record);
    let all_settled = settled(&fleet.stack.db, &ids, Duration::from_secs(60)).await;
    // A scheduled message is committed as a command first and sent by the scheduler's next
    // round: give what is due a few rounds before anything counts as lost.
    let mut table = Table::compute(&fleet.stack.db, &record, &users, &floors, &phases).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while table.lost > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        table = Table::compute(&fleet.stack.db, &record, &users, &floors, &phases).await;
    }
    let caught_up = sockets_caught_up(&fleet.stack.db, &users, Duration::from_secs(60)).await;
    let table = Table::compute(&fleet.stack.db, &record, &users, &floors, &phases).await;
    println!(
        "\n{} users, {:.0} commands/s offered for {load_secs:.0} s\n{}",
        users_n,
        rate,
        table.render()
    );

    assert!(all_settled.is_some(), "accepted commands never settled");
    assert!(caught_up, "sockets never caught up with Postgres");
    assert_eq!(table.lost, 0, "lost");
    assert_eq!(table.applied_twice, 0, "applied twice");
    assert_eq!(table.postgres_seq_gaps, 0, "seq gaps in Postgres");
    assert_eq!(table.socket_gaps, 0, "socket gaps");
    assert_eq!(table.socket_duplicates, 0, "socket duplicates");
    assert_eq!(table.out_of_order, 0, "out-of-order deliveries");
    assert_eq!(
        table.rejected, 0,
        "the load holds no command a worker should refuse"
    );
    assert_eq!(
        table.refused_at_ingress, 0,
        "the load holds no invalid command"
    );
    assert_eq!(table.never_accepted, 0, "a command was never accepted");
    assert!(
        table.accepted >= commands * 9 / 10,
        "too few commands accepted"
    );
    assert!(
        unclean.is_empty(),
        "not a clean exit on SIGTERM: {unclean:?}"
    );
}
