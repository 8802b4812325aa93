//! Postgres pool and the embedded migrations (`migrations/` at the repository root).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::Settings;

/// A bounded pool: `database_max_connections` per process, and a short acquire timeout so an
/// overloaded database shows up as an error rather than a hang.
pub async fn connect(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&settings.database_url)
        .await
}

/// The workers' pool: as [`connect`], with generic plans for prepared statements. The batch
/// statements are large and run with every batch; left to choose, Postgres plans them afresh
/// on each execution (a custom plan), which measured at about three times their execution
/// (`pg_stat_statements`, bench/openloop.sh). Their plans do not depend on the values bound.
///
/// Sequential scans are priced out (`enable_seqscan = off`: still used where no index serves).
/// Every worker statement finds its rows by key, but a generic plan is made once per
/// connection, with the statistics of that moment: on a new deployment that is empty tables,
/// and the plan kept a sequential scan of `commands` for each batch until autoanalyze caught
/// up, minutes and tens of thousands of rows later (seen in bench/openloop.sh: 54 million
/// `commands` rows scanned in one 60 s run, Postgres's CPU up by half).
pub async fn connect_worker(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    let options = settings.database_url.parse::<PgConnectOptions>()?.options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
    ]);
    PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// Same as [`connect`], but does not wait for the database to be up (readiness reports it).
pub fn connect_lazy(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&settings.database_url)
}

/// Applies pending migrations. Takes an advisory lock, so concurrent starts are safe.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}
