//! End-to-end harness: starts the real binaries against real NATS JetStream and real Postgres,
//! each [`Stack`] in its own database and under its own subject prefix, so tests run in
//! parallel and repeatedly without seeing each other. [`SocketClient`] drives the npm
//! `socket.io-client` over stdio.
//!
//! Infrastructure comes from `ALLO_TEST_DATABASE_URL` (an admin connection, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `ALLO_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`); `scripts/test.sh` starts both when they do not answer.

pub mod chaos;
pub mod chaos_load;
pub mod chaos_table;
pub mod cluster;
pub mod infra;
pub mod nats_users;
pub mod privacy;
pub mod python;
pub mod sio;
mod socket;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use allo_common::ops::Pool;

use allo_common::Settings;
use allo_common::auth::TokenKeys;
use allo_common::ids::UserId;
use serde_json::Value;
use sqlx::PgPool;
use tokio::process::{Child, Command};

pub use nats_users::NatsUsers;
pub use privacy::Look;
pub use socket::SocketClient;
pub use std::time::Duration as StdDuration;

pub fn admin_database_url() -> String {
    std::env::var("ALLO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("ALLO_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A string field of a JSON reply (an id), or a failed test naming what was missing.
pub fn id(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_string()
}

/// The workspace root (where `target/` and `tests/js` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Builds the binaries once per test process, so tests never run stale ones. Built like
/// `cargo test --workspace` builds (all targets), so the feature set matches and this is a
/// no-op after `cargo test` compiled; `--bins` alone would unify features differently and
/// rebuild every time.
fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut cargo = std::process::Command::new(env!("CARGO"));
        // cargo sets CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ... for this test process; some build
        // scripts (ring) rerun when those change, so a nested build would rebuild them.
        for (key, _) in std::env::vars() {
            if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
                || key == "OUT_DIR"
            {
                cargo.env_remove(key);
            }
        }
        let status = cargo
            .args(["build", "--workspace", "--all-targets", "-q"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --bins failed");
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let dir = if dir.join("allo-api").exists() {
            dir
        } else {
            workspace_root().join("target/debug")
        };
        assert!(
            dir.join("allo-api").exists(),
            "allo-api not found in {}",
            dir.display()
        );
        dir
    })
}

/// The path of one of the workspace's binaries (`allo-api`, ...), built if need be.
pub fn binary(name: &str) -> PathBuf {
    binaries().join(name)
}

/// What a test needs running.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub workers: usize,
    pub api: bool,
    pub fanout: bool,
    pub ack_wait_secs: u64,
    /// Extra `ALLO_*` variables for every process.
    pub env: Vec<(String, String)>,
    /// Use this NATS instead of the shared one (a test's own server, to stop and restart).
    pub nats_url: Option<String>,
    /// Use this Postgres (admin URL) instead of the shared one.
    pub admin_database_url: Option<String>,
    /// NATS users the processes (and the harness, as `allo-admin`) connect as; by default the
    /// passwords scripts/test.sh exported.
    pub nats_users: Option<NatsUsers>,
    /// This subject prefix instead of a random one (only on a NATS of the test's own).
    pub subject_prefix: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            api: true,
            fanout: true,
            ack_wait_secs: 30,
            env: Vec::new(),
            nats_url: None,
            admin_database_url: None,
            nats_users: None,
            subject_prefix: None,
        }
    }
}

/// A response as a client sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Asserts a refusal as a client sees it: this status, `application/problem+json` whose
/// `status` agrees, and a non-empty `code`; returns the reply for further checks (field, ...).
#[track_caller]
pub fn assert_problem(reply: Reply, status: u16) -> Reply {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(
        reply.content_type(),
        "application/problem+json",
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["status"], status, "{:?}", reply.body);
    assert!(
        reply.body["code"].as_str().is_some_and(|c| !c.is_empty()),
        "no code: {:?}",
        reply.body
    );
    reply
}

/// A worker's refusal as [`Stack::refused`] checked it: (status, code, commandId).
#[derive(Debug)]
pub struct Refusal(pub u16, pub String, pub String);

impl Refusal {
    /// Asserts the status and the code together.
    pub fn is(&self, status: u16, code: &str) {
        assert_eq!((self.0, self.1.as_str()), (status, code), "{self:?}");
    }
}

/// One isolated deployment of Allo: own database, own subject prefix, own ports.
pub struct Stack {
    pub settings: Settings,
    pub api_url: String,
    pub fanout_url: String,
    /// The operators' listeners (`/metrics`, `/readyz`) of the API and the first fan-out.
    pub api_admin_url: String,
    pub fanout_admin_url: String,
    pub db: PgPool,
    pub nats: async_nats::Client,
    pub http: reqwest::Client,
    db_name: String,
    admin_url: String,
    keys: TokenKeys,
    children: HashMap<String, Child>,
    log_dir: PathBuf,
    env: Vec<(String, String)>,
    next_worker: usize,
    /// Each worker process's own metrics port, so a test can tell what each one did.
    worker_metrics: HashMap<String, u16>,
    /// Public URL of each API and fan-out replica -> its admin listener's URL.
    admin_urls: HashMap<String, String>,
    nats_users: NatsUsers,
}

/// A port that is free now, picked at random below Linux's ephemeral range (32768+): a port
/// the kernel hands out could be taken by any outgoing connection, or by another test's
/// server, before our process binds it.
/// Never the same port twice in one test binary: tests run in parallel threads, and two of
/// them picking one port before either process binds it would start one service that fails.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

pub fn with_database(url: &str, db: &str) -> String {
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    format!("{base}/{db}")
}

impl Stack {
    pub async fn start(options: StackOptions) -> Stack {
        let bins = binaries();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = options
            .subject_prefix
            .clone()
            .unwrap_or_else(|| format!("t{}", &id[..12]));
        let db_name = format!("allo_test_{}", &id[..16]);
        let admin_url = options
            .admin_database_url
            .clone()
            .unwrap_or_else(admin_database_url);
        let admin = PgPool::connect(&admin_url)
            .await
            .expect("admin connection to Postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;

        let settings = Settings {
            database_url: with_database(&admin_url, &db_name),
            nats_url: options.nats_url.clone().unwrap_or_else(nats_url),
            jwt_secret: format!("test-secret-{id}-0123456789abcdef0123"),
            api_addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            fanout_addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            api_admin_addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            fanout_admin_addr: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            subject_prefix: prefix.clone(),
            ..Settings::default()
        };
        let db = allo_common::db::connect(&settings)
            .await
            .expect("test database");
        allo_common::db::migrate(&db).await.expect("migrations");
        let nats_users = options
            .nats_users
            .clone()
            .unwrap_or_else(NatsUsers::from_env);
        let nats = nats_users
            .connect(&settings.nats_url, "admin")
            .await
            .expect("NATS");
        let log_dir = workspace_root().join("target/e2e-logs").join(&prefix);
        std::fs::create_dir_all(&log_dir).expect("log dir");

        let mut env = vec![
            (
                "ALLO_DATABASE_URL".to_string(),
                settings.database_url.clone(),
            ),
            ("ALLO_NATS_URL".into(), settings.nats_url.clone()),
            ("ALLO_JWT_SECRET".into(), settings.jwt_secret.clone()),
            ("ALLO_API_ADDR".into(), settings.api_addr.to_string()),
            ("ALLO_FANOUT_ADDR".into(), settings.fanout_addr.to_string()),
            (
                "ALLO_API_ADMIN_ADDR".into(),
                settings.api_admin_addr.to_string(),
            ),
            (
                "ALLO_FANOUT_ADMIN_ADDR".into(),
                settings.fanout_admin_addr.to_string(),
            ),
            ("ALLO_SUBJECT_PREFIX".into(), prefix.clone()),
            ("ALLO_MIGRATE_ON_START".into(), "false".into()),
            ("ALLO_DATABASE_MAX_CONNECTIONS".into(), "8".into()),
            ("ALLO_WORKER__CONCURRENCY".into(), "4".into()),
            (
                "ALLO_JETSTREAM__ACK_WAIT_SECS".into(),
                options.ack_wait_secs.to_string(),
            ),
            ("ALLO_WORKER__RELAY_GRACE_MS".into(), "500".into()),
            ("ALLO_WORKER__RELAY_INTERVAL_MS".into(), "250".into()),
            // `ALLO_TEST_RUST_LOG` turns a failing run's service logs up (target/e2e-logs).
            (
                "RUST_LOG".into(),
                std::env::var("ALLO_TEST_RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
            ),
            ("RUST_BACKTRACE".into(), "0".into()),
        ];
        env.extend(options.env.iter().cloned());
        let mut stack = Stack {
            api_url: format!("http://{}", settings.api_addr),
            fanout_url: format!("http://{}", settings.fanout_addr),
            api_admin_url: format!("http://{}", settings.api_admin_addr),
            fanout_admin_url: format!("http://{}", settings.fanout_admin_addr),
            nats_users,
            admin_urls: HashMap::from([
                (
                    format!("http://{}", settings.api_addr),
                    format!("http://{}", settings.api_admin_addr),
                ),
                (
                    format!("http://{}", settings.fanout_addr),
                    format!("http://{}", settings.fanout_admin_addr),
                ),
            ]),
            keys: TokenKeys::from_secret(&settings.jwt_secret),
            settings,
            db,
            nats,
            http: reqwest::Client::new(),
            db_name,
            admin_url,
            children: HashMap::new(),
            log_dir,
            env,
            next_worker: 0,
            worker_metrics: HashMap::new(),
        };
        // Workers first: they provision the streams and consumers before anything publishes.
        for _ in 0..options.workers {
            stack.start_worker().await;
        }
        if options.api {
            stack.spawn("api", &bins.join("allo-api"), &[]);
            stack.wait_ready("api", &stack.api_url.clone()).await;
        }
        if options.fanout {
            stack.spawn("fanout", &bins.join("allo-fanout"), &[]);
            stack.wait_ready("fanout", &stack.fanout_url.clone()).await;
        }
        stack
    }

    fn spawn(&mut self, name: &str, bin: &Path, args: &[&str]) {
        self.spawn_with_env(name, bin, args, &[]);
    }

    fn spawn_with_env(
        &mut self,
        name: &str,
        bin: &Path,
        args: &[&str],
        extra: &[(String, String)],
    ) {
        // Appended to: a restarted process keeps its predecessor's log.
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{name}.log")))
            .expect("log file");
        let bin_name = bin.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let child = Command::new(bin)
            .args(args)
            .envs(self.env.iter().cloned())
            .envs(self.nats_users.service_env(bin_name))
            .envs(extra.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        self.children.insert(name.to_string(), child);
    }

    /// Runs one of the workspace's binaries as an operator would against this stack (its env,
    /// the operators' NATS user `allo-admin`), to completion; returns (exited successfully,
    /// stdout, stderr).
    pub async fn run_tool(&self, bin: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(binaries().join(bin))
            .args(args)
            .envs(self.env.iter().cloned())
            .envs(self.nats_users.service_env("allo-admin"))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .unwrap_or_else(|_| panic!("{bin} {args:?} did not finish"))
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the API (again, after `terminate("api")`) and waits until it is ready.
    pub async fn start_api(&mut self) {
        self.spawn("api", &binaries().join("allo-api"), &[]);
        self.wait_ready("api", &self.api_url.clone()).await;
    }

    /// Starts one more `allo-workers` process (all pools) and waits until its consumers exist.
    pub async fn start_worker(&mut self) -> String {
        self.start_worker_with(&[]).await
    }

    /// Starts one more `allo-workers` process with these arguments (e.g. `--pool polls`), on a
    /// metrics port of its own, and waits until it serves some partitions of each pool it runs
    /// (a check the processes already running cannot satisfy).
    pub async fn start_worker_with(&mut self, args: &[&str]) -> String {
        let name = format!("worker-{}", self.next_worker);
        self.next_worker += 1;
        let pools: Vec<String> = match args
            .windows(2)
            .filter(|w| w[0] == "--pool")
            .map(|w| w[1].to_string())
            .collect::<Vec<_>>()
        {
            named if named.is_empty() => ["messages", "scheduler", "reports", "polls"]
                .map(String::from)
                .to_vec(),
            named => named,
        };
        let port = free_port();
        let bin = binaries().join("allo-workers");
        self.spawn_with_env(
            &name,
            &bin,
            args,
            &[(
                "ALLO_WORKER__METRICS_ADDR".into(),
                format!("127.0.0.1:{port}"),
            )],
        );
        self.worker_metrics.insert(name.clone(), port);
        // A starting service may retry provisioning for a minute (a JetStream cluster without
        // quorum, cluster::services_started_without_a_quorum…), each try waiting up to 10 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(75);
        while tokio::time::Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.children.get_mut(&name).map(Child::try_wait) {
                panic!(
                    "{name} exited ({status}) before it served:\n{}",
                    self.log_tail(&name)
                );
            }
            if let Some(text) = self.metrics_of(&name).await {
                let serving = |pool: &String| {
                    metric_sum(
                        &text,
                        "allo_pool_partitions_served",
                        &[&format!("pool=\"{pool}\"")],
                    ) > 0.0
                };
                if pools.iter().all(serving) {
                    return name;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{name} did not start serving {pools:?}; see {}:\n{}",
            self.log_dir.display(),
            self.log_tail(&name)
        );
    }

    /// The partitions of `pool` worker `name` serves now (from its metrics).
    pub async fn partitions_served(&self, name: &str, pool: &str) -> Vec<u16> {
        let text = self.metrics_of(name).await.unwrap_or_default();
        let prefix = "allo_pool_partition_served{";
        let mut served: Vec<u16> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter(|l| l.contains(&format!("pool=\"{pool}\"")))
            .filter_map(|l| {
                let (labels, value) = l.rsplit_once(' ')?;
                let partition = labels.split("partition=\"").nth(1)?.split('"').next()?;
                (value.trim() == "1").then(|| partition.parse().ok())?
            })
            .collect();
        served.sort_unstable();
        served
    }

    /// Commands of `pool` delivered to some worker and not yet acked, over all its partitions.
    pub async fn commands_in_flight(&self, pool: Pool) -> u64 {
        let js = async_nats::jetstream::new(self.nats.clone());
        let subjects = allo_common::subjects::Subjects::of(&self.settings);
        let stream = js
            .get_stream(subjects.command_stream())
            .await
            .expect("command stream");
        let mut held = 0;
        for partition in subjects.all_partitions() {
            held += stream
                .consumer_info(subjects.partition_consumer(pool, partition))
                .await
                .expect("partition consumer")
                .num_ack_pending as u64;
        }
        held
    }

    /// The Prometheus text of worker `name`, or `None` if it does not answer.
    pub async fn metrics_of(&self, name: &str) -> Option<String> {
        let port = self.worker_metrics.get(name)?;
        let response = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    }

    /// The sum of `metric` over the series whose labels contain every one of `labels`
    /// (e.g. `operation="votePoll"`), in worker `name`'s metrics. Panics if it does not answer.
    pub async fn worker_counter(&self, name: &str, metric: &str, labels: &[&str]) -> f64 {
        let text = self
            .metrics_of(name)
            .await
            .unwrap_or_else(|| panic!("{name} does not answer on its metrics port"));
        metric_sum(&text, metric, labels)
    }

    /// Commands of `operation` that worker `name` committed.
    pub async fn committed_by(&self, name: &str, operation: &str) -> u64 {
        let op = format!("operation=\"{operation}\"");
        self.worker_counter(
            name,
            "allo_commands_applied_total",
            &[op.as_str(), "outcome=\"committed\""],
        )
        .await as u64
    }

    /// Where this stack's process logs go (`target/e2e-logs/<prefix>/`).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The log (stdout and stderr) of process `name` so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Waits until `metric` in `text_of()` reaches `want`; panics after `within`.
    pub async fn wait_metric<F, Fut>(
        &self,
        what: &str,
        want: f64,
        within: Duration,
        text_of: F,
    ) -> f64
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = f64>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = text_of().await;
            if n >= want {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} reached {n}, not {want}, within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin listener's URL of the API or fan-out replica serving clients at `public`.
    pub fn admin_url(&self, public: &str) -> String {
        self.admin_urls
            .get(public)
            .cloned()
            .unwrap_or_else(|| panic!("no admin listener known for {public}"))
    }

    /// The sum of `metric` (series with all `labels`) in the fan-out at `url`.
    pub async fn fanout_counter(&self, url: &str, metric: &str, labels: &[&str]) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.admin_url(url)))
            .send()
            .await
            .expect("fan-out metrics")
            .text()
            .await
            .expect("fan-out metrics body");
        metric_sum(&text, metric, labels)
    }

    /// Starts the stack's own fan-out again, on its address (after `kill` or `terminate`).
    /// A fan-out that cannot bind yet (the port still held for a moment after the kill) exits;
    /// it is started again, a few times, before the test gives up.
    pub async fn start_fanout_again(&mut self) {
        for _ in 0..10 {
            self.spawn("fanout", &binaries().join("allo-fanout"), &[]);
            let exited = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let child = self.children.get_mut("fanout");
                    if let Some(Ok(Some(_))) = child.map(|c| c.try_wait()) {
                        return;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(2), exited)
                .await
                .is_err()
            {
                break; // still running: it bound its port
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.wait_ready("fanout", &self.fanout_url.clone()).await;
    }

    /// Starts another fan-out replica on its own port; returns (process name, URL).
    pub async fn start_fanout(&mut self) -> (String, String) {
        let name = format!("fanout-{}", self.next_worker);
        self.next_worker += 1;
        let addr = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let bin = binaries().join("allo-fanout");
        self.spawn_with_env(
            &name,
            &bin,
            &[],
            &[
                ("ALLO_FANOUT_ADDR".into(), addr.clone()),
                ("ALLO_FANOUT_ADMIN_ADDR".into(), admin.clone()),
            ],
        );
        let url = format!("http://{addr}");
        self.admin_urls
            .insert(url.clone(), format!("http://{admin}"));
        self.wait_ready(&name, &url).await;
        (name, url)
    }

    /// A socket of `user` on the fan-out at `url`.
    pub async fn socket_at(&self, url: &str, user: &str) -> SocketClient {
        SocketClient::connect(url, &self.token(user))
            .await
            .expect("socket connects")
    }

    /// SIGKILL: the process gets no chance to ack, nak or clean up.
    pub async fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.children.remove(name) {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub async fn terminate(&mut self, name: &str) -> bool {
        self.signal(name, "TERM");
        self.wait_exit(name, Duration::from_secs(20)).await
    }

    /// Sends `signal` (`TERM`, `STOP`, ...) to process `name` without waiting.
    pub fn signal(&self, name: &str, signal: &str) {
        if let Some(pid) = self.children.get(name).and_then(Child::id) {
            let _ = std::process::Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status();
        }
    }

    /// Waits for process `name` to exit; returns whether it exited successfully in time.
    pub async fn wait_exit(&mut self, name: &str, within: Duration) -> bool {
        let Some(mut child) = self.children.remove(name) else {
            return false;
        };
        let exited = tokio::time::timeout(within, child.wait()).await;
        matches!(exited, Ok(Ok(s)) if s.success())
    }

    /// Waits for process `name`, serving clients at `public`, to be ready (asked on its admin
    /// port). If it exits or stays unready, the panic quotes the end of its log.
    async fn wait_ready(&mut self, name: &str, public: &str) {
        let base = self.admin_url(public);
        for _ in 0..600 {
            if let Some(Ok(Some(status))) = self.children.get_mut(name).map(Child::try_wait) {
                panic!(
                    "{name} exited ({status}) before it was ready:\n{}",
                    self.log_tail(name)
                );
            }
            // Ready, and ours: another test's server could hold the port if ours failed to bind.
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
                && r.json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|b| b["prefix"].as_str().map(String::from))
                    == Some(self.settings.subject_prefix.clone())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{name} at {base} never became ready; see {}:\n{}",
            self.log_dir.display(),
            self.log_tail(name)
        );
    }

    /// The last lines of process `name`'s log, for a failure message (CI keeps only the output).
    fn log_tail(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.log_dir.join(format!("{name}.log")))
            .unwrap_or_else(|e| format!("(no log: {e})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The keys this stack's processes trust (to mint expired or role-bearing tokens).
    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    pub fn token(&self, user: &str) -> String {
        self.token_with_roles(user, &[])
    }

    pub fn token_with_roles(&self, user: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        self.keys
            .mint(
                &UserId::parse(user).expect("user id"),
                &roles,
                chrono::Duration::hours(1),
            )
            .expect("mint")
    }

    /// `POST /api/chat/<op>` with a raw body and extra headers.
    pub async fn post_raw(
        &self,
        token: Option<&str>,
        op: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/api/chat/{op}", self.api_url))
            .body(body);
        request = request.header("content-type", "application/json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        reply(request.send().await.expect("POST")).await
    }

    pub async fn post(&self, token: &str, op: &str, body: Value) -> Reply {
        self.post_raw(Some(token), op, body.to_string(), &[]).await
    }

    /// POST and wait for the outcome (`Prefer: wait=10`).
    pub async fn post_wait(&self, token: &str, op: &str, body: Value) -> Reply {
        self.post_raw(Some(token), op, body.to_string(), &[("prefer", "wait=10")])
            .await
    }

    pub async fn get(&self, token: Option<&str>, path: &str) -> Reply {
        let mut request = self.http.get(format!("{}{path}", self.api_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        reply(request.send().await.expect("GET")).await
    }

    /// GET on the API's admin listener (`/readyz`, `/metrics`).
    pub async fn admin_get(&self, path: &str) -> Reply {
        let request = self.http.get(format!("{}{path}", self.api_admin_url));
        reply(request.send().await.expect("GET")).await
    }

    /// GET on the API's admin listener with a bearer token (the dead-letter routes).
    pub async fn admin_get_as(&self, token: &str, path: &str) -> Reply {
        let request = self.http.get(format!("{}{path}", self.api_admin_url));
        reply(request.bearer_auth(token).send().await.expect("GET")).await
    }

    /// Creates a conversation as `owner` and returns its id (waits for the commit).
    pub async fn create_conversation(&self, owner: &str, kind: &str, others: &[&str]) -> String {
        let token = self.token(owner);
        let reply = self
            .post_wait(
                &token,
                "createConversation",
                serde_json::json!({"participants": others, "type": kind, "topic": "test"}),
            )
            .await;
        if reply.status == 202
            && let Some(command_id) = reply.body["commandId"].as_str()
        {
            let outcome = self.outcome(&token, command_id).await;
            assert_eq!(outcome["status"], "committed", "{outcome}");
        } else {
            assert_eq!(reply.status, 201, "{:?}", reply.body);
        }
        reply.body["conversationID"]
            .as_str()
            .expect("conversationID")
            .to_string()
    }

    /// Runs a command and waits for it; panics unless it was applied. Returns its `result`.
    /// A command still queued when `Prefer: wait` ran out (202, on a loaded machine) is
    /// followed as a client would, through `GET /api/commands/{id}`.
    pub async fn act(&self, user: &str, op: &str, body: Value) -> Value {
        let token = self.token(user);
        let reply = self.post_wait(&token, op, body.clone()).await;
        if reply.status == 202
            && let Some(command_id) = reply.body["commandId"].as_str()
        {
            let outcome = self.outcome(&token, command_id).await;
            assert_eq!(
                outcome["status"], "committed",
                "{user} {op} {body}: {outcome}"
            );
            return outcome["result"].clone();
        }
        assert!(
            matches!(reply.status, 200 | 201),
            "{user} {op} {body}: {} {:?}",
            reply.status,
            reply.body
        );
        reply.body["result"].clone()
    }

    /// Runs a command that the worker must refuse; returns (status, code, commandId). Whatever
    /// the caller checks next, this already holds: the answer is problem+json with a known
    /// domain code whose status it carries, the command is recorded as rejected with that code
    /// (readable by its sender), and it left no event behind.
    pub async fn refused(&self, user: &str, op: &str, body: Value) -> Refusal {
        let token = self.token(user);
        let reply = self.post_wait(&token, op, body.clone()).await;
        assert_eq!(
            reply.content_type(),
            "application/problem+json",
            "{user} {op} {body}: {} {:?}",
            reply.status,
            reply.body
        );
        let code = reply.body["code"].as_str().unwrap_or_default().to_string();
        let known = allo_common::error::ErrorCode::parse(&code)
            .unwrap_or_else(|| panic!("{user} {op}: unknown code in {:?}", reply.body));
        assert_eq!(
            reply.status,
            known.http_status(),
            "{user} {op}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["status"], reply.status, "{:?}", reply.body);
        let command_id = reply.body["commandId"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "{user} {op}: a worker refusal names its command: {:?}",
                    reply.body
                )
            })
            .to_string();
        let stored = self
            .get(Some(&token), &format!("/api/commands/{command_id}"))
            .await;
        assert_eq!(
            (stored.body["status"].as_str(), stored.body["code"].as_str()),
            (Some("rejected"), Some(code.as_str())),
            "{user} {op}: {:?}",
            stored.body
        );
        let id = uuid::Uuid::parse_str(&command_id).expect("command id");
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE command_id = $1")
            .bind(id)
            .fetch_one(&self.db)
            .await
            .expect("events of the command");
        assert_eq!(events, 0, "{user} {op}: a refused command left events");
        Refusal(reply.status, code, command_id)
    }

    /// Polls `GET /api/commands/{id}` until the command is no longer `accepted` (up to 60 s: a
    /// command dead-lettered after NAK delays, on a loaded machine, takes a while).
    pub async fn outcome(&self, token: &str, command_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            let reply = self
                .get(Some(token), &format!("/api/commands/{command_id}"))
                .await;
            if reply.status == 200 && reply.body["status"] != "accepted" {
                return reply.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("command {command_id} was not applied in time");
    }

    pub async fn socket(&self, user: &str) -> SocketClient {
        SocketClient::connect(&self.fanout_url, &self.token(user))
            .await
            .expect("socket connects")
    }

    /// Messages the command stream holds (pending commands). Panics if the stream cannot be
    /// read: "no stream" must not pass for "nothing pending".
    pub async fn pending_commands(&self) -> u64 {
        let js = async_nats::jetstream::new(self.nats.clone());
        let subjects = allo_common::subjects::Subjects::of(&self.settings);
        let mut stream = js
            .get_stream(subjects.command_stream())
            .await
            .unwrap_or_else(|e| panic!("command stream {}: {e}", subjects.command_stream()));
        stream
            .info()
            .await
            .expect("command stream info")
            .state
            .messages
    }

    /// Commands ever stored in the command stream (its last sequence): what ingress published,
    /// whether or not a worker has consumed it since.
    pub async fn commands_published(&self) -> u64 {
        let js = async_nats::jetstream::new(self.nats.clone());
        let subjects = allo_common::subjects::Subjects::of(&self.settings);
        let mut stream = js
            .get_stream(subjects.command_stream())
            .await
            .unwrap_or_else(|e| panic!("command stream {}: {e}", subjects.command_stream()));
        stream
            .info()
            .await
            .expect("command stream info")
            .state
            .last_sequence
    }

    /// Waits until the command stream holds `want` commands; panics after `within`.
    pub async fn wait_pending(&self, want: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.pending_commands().await;
            if n == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} commands pending, not {want}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `sql` (a count) until it reaches `want`; panics after `within`.
    pub async fn wait_count(&self, sql: &'static str, want: i64, within: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.count(sql).await;
            if n >= want || tokio::time::Instant::now() > deadline {
                assert_eq!(n, want, "{sql}");
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `sql` (a count) until it is at least `want`; panics after `within`.
    pub async fn wait_count_at_least(&self, sql: &'static str, want: i64, within: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.count(sql).await;
            if n >= want {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sql}: {n}, not {want}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn socket_with_roles(&self, user: &str, roles: &[&str]) -> SocketClient {
        SocketClient::connect(&self.fanout_url, &self.token_with_roles(user, roles))
            .await
            .expect("socket connects")
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db)
            .await
            .expect("count query")
    }
}

/// The sum of `metric` over the Prometheus series whose labels contain all of `labels`.
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            (name == metric && labels.iter().all(|l| series.contains(l)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

impl Drop for Stack {
    /// Stops the processes, drops the database and deletes the streams.
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.start_kill();
        }
        let db_name = self.db_name.clone();
        let admin_url = self.admin_url.clone();
        let subjects = allo_common::subjects::Subjects::of(&self.settings);
        let nats = self.nats.clone();
        let db = self.db.clone();
        // Drop cannot await; clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                db.close().await;
                if let Ok(admin) = PgPool::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                }
                let js = async_nats::jetstream::new(nats);
                let _ = js.delete_stream(subjects.command_stream()).await;
                let _ = js.delete_stream(subjects.event_stream()).await;
                let _ = js.delete_stream(subjects.rate_stream()).await;
                let _ = js
                    .delete_stream(allo_common::ingress::idempotency_stream(&subjects))
                    .await;
            });
        });
        let _ = cleanup.join();
    }
}
