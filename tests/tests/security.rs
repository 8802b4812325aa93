//! Safe by default, and sockets that live no longer than their tokens (issue 11).

use std::process::Stdio;
use std::time::Duration;

use allo_common::ids::UserId;
use allo_e2e::{SocketClient, Stack, StackOptions, binary};
use serde_json::{Value, json};

/// Runs a binary with only the given `ALLO_*` variables (none inherited) for up to 10 s and
/// returns (exited successfully, what it printed).
async fn run_with(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(binary(bin));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("ALLO_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .expect("the binary exits on its own (it must refuse, not serve)")
        .expect("binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn nothing_configured_means_no_service_and_no_tokens() {
    // A fresh install with no settings: production, no secret. Every service refuses to start
    // rather than accept tokens signed with the public dev secret.
    // (Workers never see a token and need no secret.)
    for bin in ["allo-api", "allo-fanout"] {
        let (ok, text) = run_with(bin, &[], &[]).await;
        assert!(!ok, "{bin} started with nothing configured: {text}");
        assert!(text.contains("ALLO_JWT_SECRET"), "{bin}: {text}");
    }
    // The dev secret named explicitly, but not dev mode: refused.
    let dev_secret = allo_common::config::DEV_JWT_SECRET;
    let (ok, text) = run_with("allo-api", &[], &[("ALLO_JWT_SECRET", dev_secret)]).await;
    assert!(!ok && text.contains("public"), "{text}");
    // Minting is a dev-mode tool, even with a real secret configured.
    let secret = "a-real-secret-0123456789-0123456789";
    let (ok, text) = run_with(
        "allo-api",
        &["token", "alice"],
        &[("ALLO_JWT_SECRET", secret)],
    )
    .await;
    assert!(!ok && text.contains("dev mode only"), "{text}");
    // Dev mode mints, with the dev secret, and only on loopback.
    let (ok, token) = run_with(
        "allo-api",
        &["token", "alice"],
        &[("ALLO_ENVIRONMENT", "dev")],
    )
    .await;
    assert!(ok, "{token}");
    let keys = allo_common::auth::TokenKeys::from_secret(dev_secret);
    assert_eq!(
        keys.verify(token.trim()).expect("dev token").user.as_str(),
        "alice"
    );
    let (ok, text) = run_with(
        "allo-api",
        &[],
        &[
            ("ALLO_ENVIRONMENT", "dev"),
            ("ALLO_API_ADDR", "0.0.0.0:5999"),
        ],
    )
    .await;
    assert!(!ok && text.contains("loopback"), "{text}");
}

#[tokio::test]
async fn a_token_good_for_longer_than_the_maximum_is_refused() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        fanout: true,
        ..Default::default()
    })
    .await;
    let alice = UserId::parse("alice").expect("user");
    let long = stack
        .keys()
        .mint(&alice, &[], chrono::Duration::days(400))
        .expect("mint");
    let reply = stack.get(Some(&long), "/api/conversations").await;
    assert_eq!(reply.status, 401, "{:?}", reply.body);
    let refused = SocketClient::connect(&stack.fanout_url, &long).await;
    assert!(refused.is_err(), "a year-long token opened a socket");
    let short = stack.token("alice");
    assert_eq!(
        stack.get(Some(&short), "/api/conversations").await.status,
        200
    );
}

fn short_lived(stack: &Stack, user: &str, roles: &[&str], secs: i64) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    stack
        .keys()
        .mint(
            &UserId::parse(user).expect("user"),
            &roles,
            chrono::Duration::seconds(secs),
        )
        .expect("mint")
}

async fn stack_with_notice(notice_secs: u64) -> Stack {
    Stack::start(StackOptions {
        env: vec![(
            "ALLO_AUTH__REFRESH_NOTICE_SECS".into(),
            notice_secs.to_string(),
        )],
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn a_socket_is_warned_then_disconnected_when_its_token_expires() {
    // Lifetimes of seconds, with room for a slow machine to connect first.
    let stack = stack_with_notice(5).await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;
    let mut socket =
        SocketClient::connect(&stack.fanout_url, &short_lived(&stack, "alice", &[], 10))
            .await
            .expect("connects");
    socket.join(&conv).await;
    let warned = socket
        .next_named("tokenExpiring", Duration::from_secs(11))
        .await
        .unwrap_or_else(|| panic!("no tokenExpiring; got {:?}", socket.backlog()));
    assert!(warned["expiresAt"].is_i64(), "{warned}");
    socket
        .next_named("tokenExpired", Duration::from_secs(12))
        .await
        .unwrap_or_else(|| panic!("no tokenExpired; got {:?}", socket.backlog()));
    let gone = socket.next_kind("disconnect", Duration::from_secs(5)).await;
    assert!(
        gone.is_some(),
        "the socket outlived its token: {:?}",
        socket.backlog()
    );
    // And it hears nothing more from the conversation.
    stack
        .act(
            "bob",
            "sendMessage",
            json!({"conversationID": conv, "message": "after exp"}),
        )
        .await;
    assert!(
        socket
            .next_named("message", Duration::from_secs(1))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_refreshed_socket_outlives_its_first_token_and_takes_the_new_roles() {
    let stack = stack_with_notice(5).await;
    let conv = stack
        .create_conversation("alice", "group", &["bob", "carol"])
        .await;
    let mut socket = SocketClient::connect(
        &stack.fanout_url,
        &short_lived(&stack, "mia", &["moderator"], 10),
    )
    .await
    .expect("connects");
    let warned = socket
        .next_named("tokenExpiring", Duration::from_secs(11))
        .await
        .expect("warned before exp");
    let first_exp = warned["expiresAt"].as_i64().expect("expiresAt");
    // Another user's token is refused and changes nothing.
    let refused = socket
        .emit("refreshToken", json!({"token": stack.token("bob")}))
        .await;
    assert_eq!(refused["error"]["status"], 401, "{refused}");
    // A fresh token of the same user, now without the moderator role.
    let refreshed: Value = socket
        .emit("refreshToken", json!({"token": stack.token("mia")}))
        .await;
    assert_eq!(refreshed["refreshed"], true, "{refreshed}");
    // Past the first token's exp, the socket is still there and still submits.
    let past_exp = first_exp + 2 - chrono::Utc::now().timestamp();
    tokio::time::sleep(Duration::from_secs(u64::try_from(past_exp).unwrap_or(0))).await;
    assert!(
        socket
            .next_kind("disconnect", Duration::from_millis(100))
            .await
            .is_none(),
        "disconnected despite the refresh: {:?}",
        socket.backlog()
    );
    let ack = socket
        .emit(
            "createConversation",
            json!({"participants": ["alice"], "type": "group"}),
        )
        .await;
    assert!(ack["commandId"].is_string(), "{ack}");
    // The role it lost no longer reaches it: a report goes to moderators, not to mia.
    let mut moderator = stack.socket_with_roles("max", &["moderator"]).await;
    let m = allo_e2e::id(
        &stack
            .act(
                "alice",
                "sendMessage",
                json!({"conversationID": conv, "message": "spam?"}),
            )
            .await,
        "messageId",
    );
    stack
        .act(
            "bob",
            "reportMessage",
            json!({"conversationID": conv, "messageId": m, "reason": "spam"}),
        )
        .await;
    moderator
        .next_named("messageReported", Duration::from_secs(10))
        .await
        .expect("a moderator hears of the report");
    assert!(
        socket
            .next_named("messageReported", Duration::from_secs(1))
            .await
            .is_none(),
        "a socket whose moderator role was dropped still hears reports"
    );
}

fn send_body(conversation: &str) -> String {
    json!({"conversationID": conversation, "message": "held"}).to_string()
}

#[tokio::test]
async fn past_its_in_flight_cap_the_api_refuses_at_once_and_recovers() {
    // No workers: a `Prefer: wait` request is held for its whole wait.
    let stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        env: vec![
            ("ALLO_LIMITS__API_MAX_IN_FLIGHT".into(), "2".into()),
            ("ALLO_LIMITS__WAITS_PER_USER".into(), "4".into()),
        ],
        ..Default::default()
    })
    .await;
    let conv = uuid::Uuid::new_v4().to_string();
    let hold = |user: &'static str| {
        let token = stack.token(user);
        let body = send_body(&conv);
        let stack = &stack;
        async move {
            // The probe may take the last slot first: then this hold is refused; try again.
            loop {
                let reply = stack
                    .post_raw(
                        Some(&token),
                        "sendMessage",
                        body.clone(),
                        &[("prefer", "wait=6")],
                    )
                    .await;
                if reply.status != 503 {
                    return reply;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let probe = async {
        // While both holds are in flight, a third request is refused at once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let reply = stack
                .get(Some(&stack.token("carol")), "/api/conversations")
                .await;
            if reply.status == 503 || tokio::time::Instant::now() > deadline {
                let health = stack.get(None, "/healthz").await;
                return (reply, health.status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (a, b, (refused, health)) = tokio::join!(hold("alice"), hold("bob"), probe);
    let refused = allo_e2e::assert_problem(refused, 503);
    assert_eq!(refused.body["code"], "overloaded", "{:?}", refused.body);
    assert!(refused.headers.get("retry-after").is_some());
    assert_eq!(health, 200, "health probes are not capped");
    assert_eq!(
        (a.status, b.status),
        (202, 202),
        "{:?} {:?}",
        a.body,
        b.body
    );
    // The holds are over: the cap no longer bites.
    let after = stack
        .get(Some(&stack.token("carol")), "/api/conversations")
        .await;
    assert_eq!(after.status, 200, "{:?}", after.body);
}

#[tokio::test]
async fn a_user_holds_a_bounded_number_of_waits() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        env: vec![("ALLO_LIMITS__WAITS_PER_USER".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let conv = uuid::Uuid::new_v4().to_string();
    let token = stack.token("alice");
    let held = || {
        stack.post_raw(
            Some(&token),
            "sendMessage",
            send_body(&conv),
            &[("prefer", "wait=8")],
        )
    };
    // Two waits are held; a third of the same user is answered (202) while they still are,
    // and another user's wait is held as usual.
    let extra = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let extra = stack
            .post_raw(
                Some(&token),
                "sendMessage",
                send_body(&conv),
                &[("prefer", "wait=8")],
            )
            .await;
        (extra, tokio::time::Instant::now())
    };
    let timed = |f| async move {
        let reply = f.await;
        (reply, tokio::time::Instant::now())
    };
    let ((one, one_at), (two, two_at), (extra, extra_at)) =
        tokio::join!(timed(held()), timed(held()), extra);
    assert_eq!(
        (one.status, two.status, extra.status),
        (202, 202, 202),
        "{:?}",
        extra.body
    );
    assert!(
        extra_at < one_at && extra_at < two_at,
        "the third wait of one user was held too"
    );
}

#[tokio::test]
async fn a_request_that_outlasts_the_timeout_is_ended() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        env: vec![
            ("ALLO_LIMITS__WAIT_MAX_SECS".into(), "1".into()),
            ("ALLO_LIMITS__REQUEST_TIMEOUT_SECS".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await;
    // A client that announces a body and trickles none of it (slowloris) holds a request slot
    // until the timeout ends the request, not forever.
    let addr = stack.api_url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/chat/sendMessage HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"conv",
        stack.token("alice")
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n{") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the held request was never ended");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"code\":\"timeout\""), "{text}");
    assert_eq!(
        stack.commands_published().await,
        0,
        "a cut-off request published"
    );
}
