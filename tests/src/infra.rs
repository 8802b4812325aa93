//! A NATS server and a Postgres cluster of a test's own, for tests that stop and restart them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{NatsUsers, free_port};

/// Up to 30 s: a server starting on a loaded 2-core machine can take a while.
async fn wait_port(port: u16, up: bool) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
            == up
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} did not go {}", if up { "up" } else { "down" });
}

/// `nats-server -js` on a free port with its own store, which survives a restart.
pub struct OwnNats {
    pub port: u16,
    store: tempdir::Dir,
    child: Option<Child>,
    /// Started from the repository's nats.conf with these users, or open when `None`.
    users: Option<NatsUsers>,
}

impl OwnNats {
    pub async fn start() -> OwnNats {
        Self::start_as(None).await
    }

    /// A server started from the shipped `nats.conf` (auth and per-service permissions), with
    /// `users`' passwords.
    pub async fn start_shipped(users: &NatsUsers) -> OwnNats {
        Self::start_as(Some(users.clone())).await
    }

    async fn start_as(users: Option<NatsUsers>) -> OwnNats {
        let mut nats = OwnNats {
            port: free_port(),
            store: tempdir::Dir::new("nats"),
            child: None,
            users,
        };
        nats.resume().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and store.
    pub async fn resume(&mut self) {
        let bin = which("nats-server").unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
        let mut command = Command::new(bin);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        match &self.users {
            // nats.conf's store_dir is relative: run in our store folder.
            Some(users) => command
                .arg("-c")
                .arg(crate::workspace_root().join("nats.conf"))
                .current_dir(&self.store.0)
                .envs(users.server_env()),
            None => command.arg("-js").arg("-sd").arg(&self.store.0),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server");
        self.child = Some(child);
        wait_port(self.port, true).await;
    }

    /// Stops the server cleanly (SIGTERM: what it acknowledged is on disk).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        wait_port(self.port, false).await;
    }
}

/// A throw-away Postgres cluster (initdb; run as the `postgres` user when we are root).
pub struct OwnPostgres {
    pub port: u16,
    dir: tempdir::Dir,
    bin: PathBuf,
}

impl OwnPostgres {
    pub async fn start() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).max())
            .expect("PostgreSQL binaries under /usr/lib/postgresql");
        let dir = tempdir::Dir::new("pg");
        as_postgres(&["chown", "postgres"], &dir.0);
        let pg = OwnPostgres {
            port: free_port(),
            dir,
            bin,
        };
        let status = pg.run(
            &pg.bin.join("initdb"),
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(status, "initdb failed");
        pg.resume().await;
        pg
    }

    fn data(&self) -> String {
        self.dir.0.join("data").display().to_string()
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, bin: &std::path::Path, args: &[&str]) -> bool {
        let mut command = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            std::process::Command::new(bin)
        };
        command
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub async fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.0.display()
        );
        let log = self.dir.0.join("server.log").display().to_string();
        assert!(
            self.run(
                &self.bin.join("pg_ctl"),
                &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "start"]
            ),
            "pg_ctl start"
        );
        wait_port(self.port, true).await;
    }

    pub async fn stop(&self) {
        assert!(
            self.run(
                &self.bin.join("pg_ctl"),
                &["-D", &self.data(), "-m", "fast", "-w", "stop"]
            ),
            "pg_ctl stop"
        );
        wait_port(self.port, false).await;
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.run(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "immediate", "stop"],
        );
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn as_postgres(command: &[&str], path: &std::path::Path) {
    if is_root() {
        let _ = std::process::Command::new(command[0])
            .args(&command[1..])
            .arg(path)
            .status();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.exists())
}

/// A temporary directory under /tmp, readable by the postgres user, removed on drop.
mod tempdir {
    use std::path::PathBuf;

    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(what: &str) -> Dir {
            let path =
                std::env::temp_dir().join(format!("allo-{what}-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
