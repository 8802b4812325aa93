//! A scaled-out deployment of a test's own (issue 12): a 3-node JetStream cluster with R3
//! streams, 2 API replicas, 2 fan-out replicas and 2 processes of each worker pool against a
//! Postgres the test can stop, and the faults of the chaos run: SIGKILL or SIGTERM any
//! replica and start it again on the same address, stop Postgres, kill a NATS node.
//!
//! Built on [`Stack`] (own database, own subject prefix); the load and the table that judges
//! the run are in [`crate::chaos_load`] and [`crate::chaos_table`].

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cluster::NatsCluster;
use crate::infra::OwnPostgres;
use crate::{Stack, StackOptions, binaries, free_port};

/// The worker pools, each run by processes of its own (`allo-workers --pool <pool>`).
pub const POOLS: [&str; 4] = ["messages", "scheduler", "reports", "polls"];

/// How to start an API or fan-out replica again on the same addresses.
struct Spec {
    bin: &'static str,
    env: Vec<(String, String)>,
    public: String,
}

/// The deployment: every process by name, and the infrastructure under it.
pub struct Fleet {
    pub stack: Stack,
    pub nats: NatsCluster,
    pub postgres: OwnPostgres,
    /// Public URLs of the API replicas, in order (`api-0`, `api-1`).
    pub api_urls: Vec<String>,
    /// Public URLs of the fan-out replicas (`fanout-0`, `fanout-1`).
    pub fanout_urls: Vec<String>,
    /// The running worker processes of each pool (their names in the stack).
    pub workers: BTreeMap<&'static str, Vec<String>>,
    specs: BTreeMap<String, Spec>,
}

/// Options of [`Fleet::start`]: replicas of each kind and extra `ALLO_*` settings.
pub struct FleetOptions {
    pub apis: usize,
    pub fanouts: usize,
    pub workers_per_pool: usize,
    pub ack_wait_secs: u64,
    pub env: Vec<(String, String)>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            apis: 2,
            fanouts: 2,
            workers_per_pool: 2,
            ack_wait_secs: 10,
            env: Vec::new(),
        }
    }
}

impl Fleet {
    pub async fn start(options: FleetOptions) -> Fleet {
        let nats = NatsCluster::start(3).await;
        let postgres = OwnPostgres::start().await;
        let mut env = vec![
            ("ALLO_JETSTREAM__REPLICAS".to_string(), "3".to_string()),
            // 12 processes against one Postgres of max_connections 100 (DESIGN: stay under it).
            ("ALLO_DATABASE_MAX_CONNECTIONS".into(), "6".into()),
            // A SIGKILLed worker's partitions move after three missed heartbeats.
            ("ALLO_WORKER__HEARTBEAT_MS".into(), "250".into()),
        ];
        env.extend(options.env);
        let stack = Stack::start(StackOptions {
            workers: 0,
            api: false,
            fanout: false,
            ack_wait_secs: options.ack_wait_secs,
            nats_url: Some(nats.urls()),
            admin_database_url: Some(postgres.admin_url()),
            env,
            ..Default::default()
        })
        .await;
        let mut fleet = Fleet {
            stack,
            nats,
            postgres,
            api_urls: Vec::new(),
            fanout_urls: Vec::new(),
            workers: BTreeMap::new(),
            specs: BTreeMap::new(),
        };
        // Workers first: they provision the streams and consumers.
        for pool in POOLS {
            for _ in 0..options.workers_per_pool {
                fleet.start_worker(pool).await;
            }
        }
        for i in 0..options.apis {
            let url = fleet.add_replica("api", i, "allo-api").await;
            fleet.api_urls.push(url);
        }
        for i in 0..options.fanouts {
            let url = fleet.add_replica("fanout", i, "allo-fanout").await;
            fleet.fanout_urls.push(url);
        }
        fleet
    }

    /// Starts one more process of `pool`; returns its name.
    pub async fn start_worker(&mut self, pool: &'static str) -> String {
        let name = self.stack.start_worker_with(&["--pool", pool]).await;
        self.workers.entry(pool).or_default().push(name.clone());
        name
    }

    /// SIGKILLs the first process of `pool` (it gets no chance to ack, nak or say goodbye).
    pub async fn kill_worker(&mut self, pool: &'static str) -> String {
        let name = self.workers.get_mut(pool).expect("pool").remove(0);
        self.stack.kill(&name).await;
        name
    }

    /// SIGKILLs a process of `pool` while it holds commands, if one does within 5 s: NATS says
    /// which partition consumers have deliveries not yet acked, and the processes' metrics
    /// which process serves them (used to pick the victim, not to judge the run). Otherwise
    /// the first process. Returns its name.
    pub async fn kill_worker_holding(&mut self, pool: &'static str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if let Some(name) = self.worker_holding(pool).await {
                self.workers
                    .get_mut(pool)
                    .expect("pool")
                    .retain(|n| *n != name);
                self.stack.kill(&name).await;
                return name;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.kill_worker(pool).await
    }

    async fn worker_holding(&self, pool: &'static str) -> Option<String> {
        let parsed = allo_common::ops::Pool::parse(pool)?;
        let subjects = allo_common::subjects::Subjects::of(&self.stack.settings);
        let js = async_nats::jetstream::new(self.stack.nats.clone());
        let stream = js.get_stream(subjects.command_stream()).await.ok()?;
        for partition in subjects.all_partitions() {
            let consumer = subjects.partition_consumer(parsed, partition);
            let held = stream.consumer_info(consumer).await.ok()?.num_ack_pending;
            if held == 0 {
                continue;
            }
            for name in &self.workers[pool] {
                let served = self.stack.partitions_served(name, pool).await;
                if served
                    .iter()
                    .any(|p| p.to_string() == partition.to_string())
                {
                    return Some(name.clone());
                }
            }
        }
        None
    }

    /// SIGTERMs the first process of `pool` and waits for it to exit; whether it exited cleanly.
    pub async fn terminate_worker(&mut self, pool: &'static str) -> bool {
        let name = self.workers.get_mut(pool).expect("pool").remove(0);
        self.stack.terminate(&name).await
    }

    /// `api-<i>` or `fanout-<i>` on addresses of its own; returns its public URL.
    async fn add_replica(&mut self, kind: &str, i: usize, bin: &'static str) -> String {
        let (addr, admin) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let upper = kind.to_ascii_uppercase();
        let public = format!("http://{addr}");
        self.stack
            .admin_urls
            .insert(public.clone(), format!("http://{admin}"));
        let name = format!("{kind}-{i}");
        self.specs.insert(
            name.clone(),
            Spec {
                bin,
                env: vec![
                    (format!("ALLO_{upper}_ADDR"), addr),
                    (format!("ALLO_{upper}_ADMIN_ADDR"), admin),
                ],
                public: public.clone(),
            },
        );
        self.restart(&name).await;
        public
    }

    /// Starts replica `name` (again) on its addresses and waits until it is ready, as a
    /// supervisor would: a process that exits before it is ready (its port still held for a
    /// moment after a kill, JetStream still electing leaders after a node came back) is
    /// started again, for up to a minute.
    pub async fn restart(&mut self, name: &str) {
        let spec = self.specs.get(name).expect("known replica");
        let (bin, env, public) = (
            binaries().join(spec.bin),
            spec.env.clone(),
            spec.public.clone(),
        );
        let admin = self.stack.admin_url(&public);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            let running = self
                .stack
                .children
                .get_mut(name)
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if !running {
                self.stack.spawn_with_env(name, &bin, &[], &env);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if self.ready(&admin).await {
                return;
            }
        }
        panic!(
            "{name} never became ready; see {}",
            self.stack.log_dir().display()
        );
    }

    /// Whether the replica with this admin listener answers ready, for this deployment.
    async fn ready(&self, admin: &str) -> bool {
        let Ok(reply) = self.stack.http.get(format!("{admin}/readyz")).send().await else {
            return false;
        };
        let ok = reply.status().is_success();
        let body: serde_json::Value = reply.json().await.unwrap_or_default();
        ok && body["prefix"] == self.stack.settings.subject_prefix.as_str()
    }

    /// SIGKILL of replica `name` (`api-0`, `fanout-1`, ...).
    pub async fn kill(&mut self, name: &str) {
        self.stack.kill(name).await;
    }

    /// SIGTERM of replica `name`, waiting for its exit; whether it exited cleanly.
    pub async fn terminate(&mut self, name: &str) -> bool {
        self.stack.terminate(name).await
    }

    /// The API and fan-out replicas by name.
    pub fn replicas(&self) -> Vec<String> {
        self.specs.keys().cloned().collect()
    }
}
