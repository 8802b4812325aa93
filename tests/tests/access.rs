//! Who may reach what (issue 11): NATS users and permissions from the shipped nats.conf, and
//! operators' endpoints kept off the client-facing ports.

use std::time::Duration;

use allo_e2e::infra::OwnNats;
use allo_e2e::{NatsUsers, Stack, StackOptions};
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::json;

const EVENT_WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

/// Whether `sub` receives anything within [`QUIET`].
async fn hears_anything(sub: &mut async_nats::Subscriber) -> bool {
    matches!(tokio::time::timeout(QUIET, sub.next()).await, Ok(Some(_)))
}

/// The whole stack runs on the shipped nats.conf, each service as its own user; nobody gets in
/// without one, the backend subscriber reads events and nothing else, and no service can
/// publish what another owns.
#[tokio::test(flavor = "multi_thread")]
async fn nats_lets_each_user_do_its_job_and_nothing_more() {
    let users = NatsUsers::generated();
    let nats = OwnNats::start_shipped(&users).await;
    let anonymous = tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(nats.url()),
    )
    .await
    .expect("the connection attempt ends");
    assert!(anonymous.is_err(), "an anonymous client got in");

    let stack = Stack::start(StackOptions {
        nats_url: Some(nats.url()),
        nats_users: Some(users.clone()),
        // The subscriber's permissions name the default prefix's event stream, ALLO_EVT.
        subject_prefix: Some("allo".into()),
        ..Default::default()
    })
    .await;
    let subscriber = users
        .connect(&nats.url(), "subscriber")
        .await
        .expect("subscriber");
    let workers = users
        .connect(&nats.url(), "workers")
        .await
        .expect("workers");
    let fanout = users.connect(&nats.url(), "fanout").await.expect("fanout");
    // Someone else's replies: a worker's pulled commands arrive on its inbox.
    let mut sniff_workers = subscriber
        .subscribe("_INBOX_allo-workers.>")
        .await
        .expect("subscribe");
    let mut sniff_default = subscriber.subscribe("_INBOX.>").await.expect("subscribe");
    let mut control = workers
        .subscribe("_INBOX_allo-workers.>")
        .await
        .expect("subscribe");

    // Every service works under its permissions: HTTP -> workers -> socket, waits included.
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut bob = stack.socket("bob").await;
    bob.join(&conv).await;
    stack
        .act(
            "alice",
            "sendMessage",
            json!({"conversationID": conv, "message": "through the permissions"}),
        )
        .await;
    let delivered = bob
        .next_named("message", EVENT_WAIT)
        .await
        .expect("delivered");
    assert_eq!(delivered["message"], "through the permissions");
    assert!(
        hears_anything(&mut control).await,
        "the workers' own inbox carried nothing: the sniffing check below would prove nothing"
    );
    assert!(
        !hears_anything(&mut sniff_workers).await,
        "the subscriber read a worker's inbox"
    );
    assert!(
        !hears_anything(&mut sniff_default).await,
        "the subscriber read _INBOX.>"
    );

    // The backend subscriber: a durable consumer on the event stream reads the event ...
    let mut js = jetstream::new(subscriber.clone());
    js.set_timeout(Duration::from_secs(2));
    let consumer = js
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some("backend".into()),
                ..Default::default()
            },
            "ALLO_EVT",
        )
        .await
        .expect("a durable consumer on the event stream");
    let mut batch = consumer
        .fetch()
        .max_messages(20)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut read = Vec::new();
    while let Some(Ok(message)) = batch.next().await {
        message.ack().await.expect("ack");
        read.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    assert!(
        read.iter().any(|e| e.contains("through the permissions")),
        "the subscriber did not read the event: {read:?}"
    );
    // ... but neither the command stream nor the command subjects.
    assert!(
        js.get_stream("ALLO_CMD").await.is_err(),
        "the subscriber reached the command stream"
    );
    let published = stack.commands_published().await;
    let forged = json!({"operation": "sendMessage", "actor": "alice"}).to_string();
    let ack = js
        .publish("allo.cmd.messages.0.sendMessage.forged", forged.into())
        .await;
    let acked = match ack {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "the subscriber published a command");
    assert_eq!(stack.commands_published().await, published);

    // Events are the workers' to publish: the fan-out's user cannot forge one.
    let mut watch = stack
        .nats
        .subscribe("allo.evt.forged.>")
        .await
        .expect("sub");
    stack.nats.flush().await.expect("flush");
    fanout
        .publish("allo.evt.forged.messageSent", "{}".into())
        .await
        .expect("client-side publish");
    fanout.flush().await.expect("flush");
    assert!(
        !hears_anything(&mut watch).await,
        "the fan-out published an event"
    );
    workers
        .publish("allo.evt.forged.messageSent", "{}".into())
        .await
        .expect("publish");
    workers.flush().await.expect("flush");
    assert!(
        hears_anything(&mut watch).await,
        "the workers' event did not arrive: the check above would prove nothing"
    );
}

/// Metrics and readiness name internals (subject prefix, dependency state): they are served on
/// the operators' listeners only; clients' ports answer `/healthz` and nothing else of the kind.
#[tokio::test(flavor = "multi_thread")]
async fn operational_endpoints_are_on_the_admin_listeners_only() {
    let stack = Stack::start(StackOptions::default()).await;
    for public in [&stack.api_url, &stack.fanout_url] {
        for path in ["/metrics", "/readyz"] {
            let status = stack
                .http
                .get(format!("{public}{path}"))
                .send()
                .await
                .expect("GET")
                .status();
            assert_eq!(status, 404, "{public}{path} is served to clients");
        }
        let health = stack.http.get(format!("{public}/healthz")).send().await;
        assert_eq!(health.expect("GET").status(), 200);
        let admin = stack.admin_url(public);
        let metrics = stack.http.get(format!("{admin}/metrics")).send().await;
        assert_eq!(metrics.expect("GET").status(), 200, "{admin}/metrics");
        let ready = stack.http.get(format!("{admin}/readyz")).send().await;
        assert_eq!(ready.expect("GET").status(), 200);
    }
}
