//! The web console (`/console/`) in a real browser: Debian's chromium driven by playwright-core
//! (`tests/js/console.mjs`). Two browser contexts sign in as two users through the dev-only
//! token route and chat through the real Socket.IO client; the fan-out is then killed and
//! started again, and both pages must show every message once and have received every seq
//! once, in order (resume with `lastSeq`). Screenshots go to `target/console-artifacts/`.
//!
//! Also here: what a production API serves of the console (the pages, with their
//! Content-Security-Policy) and what it does not (the token route: 404).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use allo_e2e::{Stack, StackOptions, workspace_root};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| PathBuf::from(dir).join(name))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!("chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
    })
}

#[tokio::test]
async fn two_users_chat_in_chromium_and_miss_nothing_when_the_fanout_restarts() {
    let browser = chromium();
    let mut stack = Stack::start(StackOptions {
        env: vec![("ALLO_ENVIRONMENT".into(), "dev".into())],
        ..StackOptions::default()
    })
    .await;
    let artifacts = workspace_root().join("target/console-artifacts");
    let js = workspace_root().join("tests/js");
    let mut child = Command::new("node")
        .arg(js.join("console.mjs"))
        .arg(&stack.api_url)
        .arg(&artifacts)
        .env("CHROMIUM", &browser)
        .current_dir(&js)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node console.mjs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut passed = false;
    let mut restarted = false;
    let script = async {
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                // SIGKILL: the sockets drop without a goodbye, as when a machine dies.
                "STOP_FANOUT" => stack.kill("fanout").await,
                "START_FANOUT" => {
                    stack.start_fanout_again().await;
                    restarted = true;
                }
                "PASS" => passed = true,
                other => println!("console.mjs: {other}"),
            }
            if matches!(line.trim(), "STOP_FANOUT" | "START_FANOUT") {
                stdin
                    .write_all(b"done\n")
                    .await
                    .expect("answer console.mjs");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(150), script)
        .await
        .expect("console.mjs finished in time");
    let status = child.wait().await.expect("console.mjs exit");
    println!("console screenshots: {}", artifacts.display());
    assert!(
        status.success() && passed,
        "the browser test failed ({status}); screenshots in {}",
        artifacts.display()
    );
    assert!(restarted, "the fan-out was never restarted");
}

#[tokio::test]
async fn production_serves_the_console_but_not_the_dev_token_route() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        fanout: false,
        ..StackOptions::default()
    })
    .await;
    let minted = stack
        .http
        .post(format!("{}/api/dev/token", stack.api_url))
        .json(&serde_json::json!({"userId": "mallory", "moderator": true}))
        .send()
        .await
        .expect("POST /api/dev/token");
    assert_eq!(minted.status(), 404, "no token minting outside dev mode");

    let page = stack
        .http
        .get(format!("{}/console/", stack.api_url))
        .send()
        .await
        .expect("GET /console/");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap_or_default().contains("app.js"));

    let config = stack.get(None, "/console/config.json").await;
    assert_eq!(config.body["devSignIn"], false, "{:?}", config.body);
    let port = stack.settings.fanout_addr.port();
    assert_eq!(
        config.body["fanoutUrl"],
        format!("http://127.0.0.1:{port}"),
        "the page's host, on the fan-out's port"
    );
    let missing = stack.get(None, "/console/../Cargo.toml").await;
    assert_eq!(missing.status, 404);
}
