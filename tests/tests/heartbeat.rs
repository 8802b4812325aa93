//! The Engine.IO heartbeat, as run by the patched engineioxide (vendor/engineioxide): real
//! npm clients that answer pings stay connected through many of them, over a websocket from the
//! start or upgraded from polling; a client that stops answering is disconnected.

use std::time::{Duration, Instant};

use allo_e2e::{SocketClient, Stack, StackOptions};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const PING_MS: u64 = 300;

#[tokio::test(flavor = "multi_thread")]
async fn answered_pings_keep_sockets_open_and_a_silent_client_is_cut_off() {
    let stack = Stack::start(StackOptions {
        env: vec![
            ("ALLO_FANOUT__PING_INTERVAL_MS".into(), PING_MS.to_string()),
            ("ALLO_FANOUT__PING_TIMEOUT_MS".into(), PING_MS.to_string()),
        ],
        ..Default::default()
    })
    .await;
    let conv = stack.create_conversation("alice", "group", &["bob"]).await;

    // A client that opens the Engine.IO session and then never answers a ping.
    let host = stack.fanout_url.trim_start_matches("http://").to_string();
    let ws_url = format!("ws://{host}/socket.io/?EIO=4&transport=websocket");
    let stream = tokio::net::TcpStream::connect(&host)
        .await
        .expect("the fan-out listens");
    let (mut silent, _) = tokio_tungstenite::client_async(ws_url.as_str(), stream)
        .await
        .expect("websocket to the fan-out");
    let open = next_text(&mut silent).await.expect("an open packet");
    let handshake: Value =
        serde_json::from_str(open.strip_prefix('0').expect("open packet")).expect("handshake JSON");
    assert_eq!(handshake["pingInterval"], PING_MS, "{handshake}");
    assert_eq!(handshake["pingTimeout"], PING_MS, "{handshake}");

    let mut over_ws =
        SocketClient::connect_over(&stack.fanout_url, &stack.token("alice"), "websocket")
            .await
            .expect("alice connects over a websocket");
    over_ws.join(&conv).await;
    let mut upgraded = stack.socket("bob").await;
    upgraded.join(&conv).await;

    let opened = Instant::now();
    assert_eq!(
        next_text(&mut silent).await.as_deref(),
        Some("2"),
        "the server pings"
    );
    // Not answered: the server closes the session (a close packet, then the websocket ends)
    // within the timeout and the heartbeat's 500 ms grid.
    let mut closed = false;
    while let Ok(frame) = tokio::time::timeout(Duration::from_secs(5), silent.next()).await {
        match frame {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => panic!("pinged again, unanswered"),
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                closed = true;
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    assert!(closed, "a client that does not answer a ping is cut off");
    assert!(opened.elapsed() < Duration::from_secs(5));

    // The npm clients answered every ping of the same stretch (and of ten intervals more).
    tokio::time::sleep(Duration::from_millis(10 * PING_MS)).await;
    for client in [&mut over_ws, &mut upgraded] {
        assert_eq!(client.next_kind("disconnect", Duration::ZERO).await, None);
    }
    let reply = stack
        .post(
            &stack.token("alice"),
            "sendMessage",
            json!({"conversationID": conv, "message": "still here"}),
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    for client in [&mut over_ws, &mut upgraded] {
        let message = client
            .next_named("message", Duration::from_secs(10))
            .await
            .expect("the message reaches a socket that answered its pings");
        assert_eq!(message["message"], "still here", "{message}");
    }
}

/// The next text frame, or `None` if the websocket ends or stays silent for 5 s.
async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Option<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_string()),
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}
