//! A JetStream cluster of a test's own on loopback (issue 12): nodes that can be SIGKILLed and
//! brought back on the same ports and stores.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::free_port;

struct Node {
    port: u16,
    cluster_port: u16,
    /// nats-server's monitoring listener (`/connz`): what each client connection received,
    /// counted by NATS, not by Allo.
    monitor_port: u16,
    store: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until JetStream answers (its meta leader is elected).
    pub async fn start(size: usize) -> NatsCluster {
        let nodes = (0..size)
            .map(|i| Node {
                port: free_port(),
                cluster_port: free_port(),
                monitor_port: free_port(),
                store: std::env::temp_dir().join(format!(
                    "allo-cluster-{}-{i}",
                    uuid::Uuid::new_v4().simple()
                )),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { nodes };
        for i in 0..size {
            cluster.resume(i).await;
        }
        cluster.wait_for_jetstream().await;
        cluster
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node's client URL, comma-separated (`ALLO_NATS_URL` for services that should
    /// reconnect to any node).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client connections of every running node, with each subscription's message count
    /// (`/connz?subs=detail`) and the node's `server_id`.
    pub async fn connections(&self) -> Vec<serde_json::Value> {
        let http = reqwest::Client::new();
        let mut all = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let url = format!(
                "http://127.0.0.1:{}/connz?subs=detail&limit=100000",
                node.monitor_port
            );
            let body: serde_json::Value = http
                .get(url)
                .send()
                .await
                .expect("nats monitoring")
                .json()
                .await
                .expect("connz JSON");
            // A connection id is only unique within its node: each one carries its node's.
            let server_id = body["server_id"].clone();
            if let Some(conns) = body["connections"].as_array() {
                all.extend(conns.iter().cloned().map(|mut conn| {
                    conn["server_id"] = server_id.clone();
                    conn
                }));
            }
        }
        all
    }

    /// Starts node `i` (again) on its ports and store.
    pub async fn resume(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let node = &mut self.nodes[i];
        std::fs::create_dir_all(&node.store).expect("store");
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &node.port.to_string(),
                "-m",
                &node.monitor_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&node.store)
            .args([
                "--server_name",
                &format!("n{i}"),
                "--cluster_name",
                "allo-test",
            ])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.cluster_port),
            ])
            .args(["--routes", &routes.join(",")])
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(node.store.with_extension("log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server");
        node.child = Some(child);
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(("127.0.0.1", node.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cluster node {i} did not come up");
    }

    /// Waits until node `i` says it is healthy (`/healthz`: JetStream enabled and its streams
    /// and consumers current): a node brought back is part of the cluster again.
    pub async fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].monitor_port);
        for _ in 0..600 {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cluster node {i} never became healthy");
    }

    /// SIGKILL: the node gets no chance to hand over leadership.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Until an R3 stream can be created (meta leader elected, every peer known).
    async fn wait_for_jetstream(&self) {
        let client = async_nats::connect(self.url(0)).await.expect("cluster");
        let js = async_nats::jetstream::new(client);
        let mut last = String::new();
        for _ in 0..300 {
            let probe = async_nats::jetstream::stream::Config {
                name: "CLUSTER_READY".into(),
                subjects: vec!["cluster.ready".into()],
                num_replicas: self.nodes.len(),
                ..Default::default()
            };
            match js.get_or_create_stream(probe).await {
                Ok(_) => {
                    let _ = js.delete_stream("CLUSTER_READY").await;
                    return;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("JetStream never became available in the cluster: {last}");
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.store);
            let _ = std::fs::remove_file(node.store.with_extension("log"));
        }
    }
}
