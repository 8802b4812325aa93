//! `allo-workers`: runs worker pools (`--pool messages|scheduler|reports|polls`, repeatable;
//! all by default), applies migrations (`allo-workers migrate`), or handles dead letters
//! (`allo-workers dead-letters list|show|replay|discard`).

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
    /// Commands set aside after failing on every delivery (JSON on stdout).
    #[command(subcommand)]
    DeadLetters(DeadLetterCmd),
}

#[derive(Subcommand)]
enum DeadLetterCmd {
    /// The latest dead letters, newest first (without command bodies).
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One dead letter with its command, last error, deliveries, first failure and time.
    Show { command_id: uuid::Uuid },
    /// Send the command back through its pool once, under a new command id linked to this one
    /// (after fixing what made it fail); again: the same new id, nothing sent. Needs a NATS
    /// user allowed to publish commands: with the shipped nats.conf, `allo-admin`.
    Replay { command_id: uuid::Uuid },
    /// Forget it; its sender keeps reading it as rejected.
    Discard { command_id: uuid::Uuid },
}

async fn dead_letters(settings: &Settings, cmd: DeadLetterCmd) -> anyhow::Result<()> {
    use allo_common::dead_letters as dl;
    let db = allo_common::db::connect(settings)
        .await
        .context("connecting to Postgres")?;
    let out = match cmd {
        DeadLetterCmd::List { limit } => serde_json::Value::from(dl::list(&db, limit).await?),
        DeadLetterCmd::Show { command_id } => dl::show(&db, command_id).await?,
        DeadLetterCmd::Discard { command_id } => dl::discard(&db, command_id).await?,
        DeadLetterCmd::Replay { command_id } => {
            let nats = allo_common::jetstream::connect(settings, "allo-workers-dead-letters")
                .await
                .context("connecting to NATS")?;
            wait_connected(&nats).await?;
            let js = async_nats::jetstream::new(nats);
            let subjects = allo_common::subjects::Subjects::of(settings);
            dl::replay(&db, &js, &subjects, command_id).await?
        }
    };
    println!("{out:#}");
    Ok(())
}

/// The client connects in the background (`retry_on_initial_connect`), and the replay goes
/// through ingress's publish, which refuses to buffer while disconnected: wait for it, bounded.
async fn wait_connected(nats: &async_nats::Client) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while nats.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("NATS not connected after 10 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

fn parse_pool(raw: &str) -> Result<Pool, String> {
    Pool::parse(raw)
        .ok_or_else(|| format!("unknown pool `{raw}` (messages, scheduler, reports, polls)"))
}

/// mimalloc instead of glibc's malloc: profiles of the open-loop benchmark showed a fifth of
/// this service's CPU in glibc's malloc/free (many small, short-lived buffers per message).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::DeadLetters(_)) => allo_common::telemetry::init_for_tool(),
        _ => allo_common::telemetry::init(),
    }
    let settings = Settings::load()?;
    allo_common::runtime::build(&settings)?.block_on(run(cli, settings))
}

async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Some(Cmd::Migrate) => {
            let db = allo_common::db::connect(&settings)
                .await
                .context("connecting to Postgres")?;
            allo_common::db::migrate(&db).await?;
            println!("migrations applied");
            return Ok(());
        }
        Some(Cmd::DeadLetters(cmd)) => return dead_letters(&settings, cmd).await,
        None => {}
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
