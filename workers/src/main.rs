//! `allo-workers`: runs worker pools (`--pool messages|scheduler|reports|polls`, repeatable;
//! all by default) or applies migrations (`allo-workers migrate`).

use allo_common::Settings;
use allo_common::ops::Pool;
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "allo-workers", about = "Allo worker pools")]
struct Cli {
    /// Pools to run in this process; repeat to run several. Default: all.
    #[arg(long = "pool", value_parser = parse_pool)]
    pools: Vec<Pool>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply database migrations and exit.
    Migrate,
}

fn parse_pool(raw: &str) -> Result<Pool, String> {
    Pool::parse(raw)
        .ok_or_else(|| format!("unknown pool `{raw}` (messages, scheduler, reports, polls)"))
}

/// mimalloc instead of glibc's malloc: profiles of the open-loop benchmark showed a fifth of
/// this service's CPU in glibc's malloc/free (many small, short-lived buffers per message).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    allo_common::telemetry::init();
    let cli = Cli::parse();
    let settings = Settings::load()?;
    if let Some(Cmd::Migrate) = cli.command {
        let db = allo_common::db::connect(&settings)
            .await
            .context("connecting to Postgres")?;
        allo_common::db::migrate(&db).await?;
        println!("migrations applied");
        return Ok(());
    }
    let pools = if cli.pools.is_empty() {
        Pool::ALL.to_vec()
    } else {
        cli.pools
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        allo_common::telemetry::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight commands");
        let _ = stop.send(true);
    });
    allo_workers::run(settings, pools, shutdown).await
}
