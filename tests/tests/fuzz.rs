//! Fuzzing the HTTP API against its own OpenAPI document (issue 11): schemathesis (PyPI, the
//! version pinned in `tests/fuzz/requirements.txt`) reads `/api/openapi.json` from a running
//! stack and sends every operation valid and invalid inputs, once with a valid token and once
//! without. A run passes only with no response >= 500 and no response that violates the
//! document (status code, content type, body schema, documented headers), with every bad
//! input refused by a 4xx, and with no route served without a valid token.
//!
//! schemathesis lives in a project-local venv (`.data/venv`); `scripts/test.sh` installs it
//! (and passes its path in `ALLO_TEST_SCHEMATHESIS`), and this suite does too when it is
//! missing (pip from PyPI), so it also runs on its own:
//! `cargo test -p allo-e2e --test fuzz -- --nocapture`. `ALLO_FUZZ_EXAMPLES` (cases per
//! operation and phase) and `ALLO_FUZZ_SEED` (to replay a red run; the report prints its
//! seed) tune a run.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use allo_e2e::{Stack, StackOptions, id, workspace_root};
use serde_json::json;

/// The checks that mean "0 responses >= 500, 0 responses that violate the document, every bad
/// input refused, no route served without a valid token" (`ignored_auth` repeats a request that
/// succeeded without its token and with a wrong one).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_schema_conformance,response_headers_conformance,negative_data_rejection,ignored_auth";

/// Cases per operation in each phase: about a minute per run on a 2-core machine.
const DEFAULT_EXAMPLES: &str = "25";

/// A run that takes longer than this is killed and fails (the suite must stay bounded).
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The schemathesis executable: `ALLO_TEST_SCHEMATHESIS` (scripts/test.sh installed it), else
/// `.data/venv`'s, installed there when it is not (or is another version than the pinned one).
/// Once per test process.
fn schemathesis() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        if let Ok(exe) = std::env::var("ALLO_TEST_SCHEMATHESIS") {
            return PathBuf::from(exe);
        }
        let root = workspace_root();
        let requirements = root.join("tests/fuzz/requirements.txt");
        let pinned = std::fs::read_to_string(&requirements).expect("tests/fuzz/requirements.txt");
        let version = pinned
            .lines()
            .find_map(|l| l.trim().strip_prefix("schemathesis=="))
            .expect("schemathesis pinned in tests/fuzz/requirements.txt")
            .to_string();
        let venv = root.join(".data/venv");
        let exe = venv.join("bin/schemathesis");
        let installed = std::process::Command::new(&exe)
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&version));
        if !installed {
            eprintln!("installing schemathesis {version} into {}", venv.display());
            let made = std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success());
            assert!(made, "python3 -m venv {} failed", venv.display());
            let pip = std::process::Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check", "-r"])
                .arg(&requirements)
                .status()
                .is_ok_and(|s| s.success());
            assert!(pip, "pip install -r {} failed", requirements.display());
        }
        exe
    })
}

/// Runs schemathesis against the stack's served document; returns (passed, report).
async fn fuzz(
    stack: &Stack,
    report_dir: &std::path::Path,
    token: Option<&str>,
    config: Option<&std::path::Path>,
) -> (bool, String) {
    let exe = schemathesis();
    let examples = std::env::var("ALLO_FUZZ_EXAMPLES").unwrap_or_else(|_| DEFAULT_EXAMPLES.into());
    let mut command = tokio::process::Command::new(exe);
    if let Some(config) = config {
        // A global option: before `run`.
        command.arg("--config-file").arg(config);
    }
    command
        .arg("run")
        .arg(format!("{}/api/openapi.json", stack.api_url))
        .args(["--url", &stack.api_url])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples])
        // One worker: schemathesis on CPython 3.11 with several threads failed inside its own
        // example generation ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--generation-database", "none"])
        .args(["--suppress-health-check", "all"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(report_dir)
        .args(["--no-color", "--output-truncate", "false"])
        .current_dir(workspace_root().join("target"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Ok(seed) = std::env::var("ALLO_FUZZ_SEED") {
        command.args(["--seed", &seed]);
    }
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let out = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {RUN_LIMIT:?}"))
        .expect("schemathesis runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// Every operation of the served document was tested: the JUnit report has a test case for
/// each (schemathesis leaves out the document's own route).
fn assert_every_operation(report_dir: &std::path::Path, doc: &serde_json::Value) {
    let junit: String = std::fs::read_dir(report_dir)
        .expect("schemathesis report directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("junit"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            let name = format!("{} {path}", method.to_uppercase());
            if path != "/api/openapi.json" && !junit.contains(&format!("name=\"{name}\"")) {
                missing.push(name);
            }
        }
    }
    assert!(missing.is_empty(), "operations not tested: {missing:?}");
}

async fn fuzz_stack() -> Stack {
    Stack::start(StackOptions {
        fanout: false,
        env: vec![
            // A generated `Prefer: wait=<n>` holds a request for at most this long.
            ("ALLO_LIMITS__WAIT_MAX_SECS".into(), "2".into()),
            // Past the command and read budgets every request is a 429 (documented): budgets
            // the run does not spend let each input reach validation, Postgres and the workers.
            ("ALLO_LIMITS__RATE_MAX_PER_WINDOW".into(), "1000000".into()),
            (
                "ALLO_LIMITS__READS_PER_USER_PER_SEC".into(),
                "100000".into(),
            ),
            ("ALLO_LIMITS__READS_BURST".into(), "100000".into()),
        ],
        ..StackOptions::default()
    })
    .await
}

/// A conversation of `user` with a message and a poll in it; returns (conversation, [ids]).
async fn seed_conversation(stack: &Stack, user: &str) -> (String, [String; 2]) {
    let conversation = stack
        .create_conversation(user, "group", &["fuzz-peer"])
        .await;
    let message = stack
        .act(
            user,
            "sendMessage",
            json!({"conversationID": conversation, "message": "seed"}),
        )
        .await;
    let poll = stack
        .act(
            user,
            "createPoll",
            json!({"conversationID": conversation, "question": "Seed?", "options": ["a", "b"]}),
        )
        .await;
    let ids = [id(&message, "messageId"), id(&poll, "messageId")];
    (conversation, ids)
}

/// Real ids offered to schemathesis (in half of the cases) wherever a conversation or message
/// id goes, so reads and commands also run past "not found" (a schemathesis config file). Reads
/// get a conversation that no command names, so the commands (`leaveConversation`, ...) cannot
/// lock the reads out of it.
async fn seeded_config(stack: &Stack, user: &str, report_dir: &std::path::Path) -> PathBuf {
    let (read, [read_message, read_poll]) = seed_conversation(stack, user).await;
    let (write, [write_message, write_poll]) = seed_conversation(stack, user).await;
    let config = format!(
        r#"[dictionaries.read]
values = ["{read}"]

[dictionaries.write]
values = ["{write}"]

[dictionaries.messages]
values = ["{read_message}", "{read_poll}", "{write_message}", "{write_poll}"]

[parameters]
"path.id" = {{ dictionary = "read", probability = 0.5 }}
"path.message_id" = {{ dictionary = "messages", probability = 0.5 }}
"body.conversationID" = {{ dictionary = "write", probability = 0.5 }}
"body.fromConversationID" = {{ dictionary = "write", probability = 0.5 }}
"body.toConversationID" = {{ dictionary = "write", probability = 0.5 }}
"body.messageId" = {{ dictionary = "messages", probability = 0.5 }}

# A body over the size limit is refused with 413, which schemathesis's default list of
# rejections lacks (a fuzzed 80 KB participants array was flagged as accepted).
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
"#
    );
    std::fs::create_dir_all(report_dir).expect("report directory");
    let path = report_dir.join("schemathesis.toml");
    std::fs::write(&path, config).expect("schemathesis config");
    path
}

async fn run_and_judge(stack: &Stack, name: &str, user: Option<&str>) {
    let doc = stack.get(None, "/api/openapi.json").await.body;
    let report_dir = workspace_root()
        .join("target/fuzz")
        .join(format!("{name}-{}", stack.settings.subject_prefix));
    // A moderator: the moderation routes run their whole path too, not only the 403.
    let token = user.map(|u| stack.token_with_roles(u, &["moderator"]));
    let config = match user {
        Some(user) => Some(seeded_config(stack, user, &report_dir).await),
        None => None,
    };
    let (passed, report) = fuzz(stack, &report_dir, token.as_deref(), config.as_deref()).await;
    println!("schemathesis ({name}):\n{report}");
    assert!(passed, "schemathesis found failures ({name}):\n{report}");
    assert_every_operation(&report_dir, &doc);
}

#[tokio::test]
async fn every_operation_holds_to_the_document_with_a_valid_token() {
    let stack = fuzz_stack().await;
    run_and_judge(&stack, "with-token", Some("fuzzer")).await;
}

#[tokio::test]
async fn every_operation_holds_to_the_document_without_a_token() {
    let stack = fuzz_stack().await;
    run_and_judge(&stack, "without-token", None).await;
}
