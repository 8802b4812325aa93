//! Upgrades of a database that already holds data: what a migration moves must arrive.

use allo_e2e::{admin_database_url, with_database};
use sqlx::PgPool;

/// The migration that moved the published mark out of the event row.
const OUTBOX: &str = "20261129100000_outbox_beside_the_log.sql";

/// The migration files, in the order sqlx applies them.
fn migration_files() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("migrations folder")
        .map(|e| e.expect("migration entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    files
}

async fn apply(db: &PgPool, file: &std::path::Path) {
    let sql = std::fs::read_to_string(file).expect("migration text");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// An event committed but not yet on the stream before the upgrade is still relayed after it
/// (it is in the outbox), and one already on the stream keeps its stream sequence (erasure
/// can still delete its copy) and stays out of the outbox.
#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_migration_keeps_unpublished_events_and_stream_sequences() {
    let admin_url = admin_database_url();
    let name = format!(
        "allo_test_mig_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = PgPool::connect(&admin_url).await.expect("admin connection");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    let db = PgPool::connect(&with_database(&admin_url, &name))
        .await
        .expect("test database");

    let files = migration_files();
    let at = files
        .iter()
        .position(|f| f.ends_with(OUTBOX))
        .expect("the outbox migration");
    for file in &files[..at] {
        apply(&db, file).await;
    }
    let (waiting, published) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let conversation = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (id, conversation_id, seq, type, at, data, published_at, stream_seq)
         VALUES ($1, $3, 1, 'message', now(), '{}', NULL, NULL),
                ($2, $3, 2, 'message', now(), '{}', now(), 42)",
    )
    .bind(waiting)
    .bind(published)
    .bind(conversation)
    .execute(&db)
    .await
    .expect("events as the old schema kept them");
    for file in &files[at..] {
        apply(&db, file).await;
    }

    let outbox: Vec<(uuid::Uuid, uuid::Uuid, i64)> =
        sqlx::query_as("SELECT event_id, conversation_id, seq FROM event_outbox")
            .fetch_all(&db)
            .await
            .expect("outbox");
    assert_eq!(outbox, vec![(waiting, conversation, 1)]);
    let seqs: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT event_id, stream_seq FROM event_stream_seqs")
            .fetch_all(&db)
            .await
            .expect("stream sequences");
    assert_eq!(seqs, vec![(published, 42)]);

    db.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("drop database");
}
