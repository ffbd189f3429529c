//! Migrating at start-up, or waiting for a migration job (`MIGRATE_ON_START=false`).

use std::time::Duration;

use common::db::{self, Schema};
use common::testing::TestDb;
use sqlx::migrate::Migrator;

const SCHEMA: Schema = Schema { name: "migtest", role: "migtest_svc" };

/// A service's own migrations: one table, numbered below the common ones (10000+).
async fn service_migrations() -> Migrator {
    let dir = std::env::temp_dir().join(format!("migtest-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0001_things.sql"), "CREATE TABLE things (id INT PRIMARY KEY);").unwrap();
    Migrator::new(dir.as_path()).await.unwrap()
}

#[tokio::test]
async fn a_service_told_not_to_migrate_waits_for_the_job() {
    let db = TestDb::create().await;
    let service = service_migrations().await;
    let waiting = tokio::spawn({
        let (url, service) = (db.url.clone(), service_migrations().await);
        async move { db::await_migrations(&url, SCHEMA, &service).await }
    });
    // Nothing has migrated the schema: the service must not start on it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!waiting.is_finished(), "it started on an unmigrated schema");

    // Only the common migrations (the highest numbers) are applied, as after the job of
    // an older version: the service's own 0001 is still missing.
    db::migrate(&db.url, SCHEMA, &Migrator::DEFAULT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!waiting.is_finished(), "it started without its own migration");

    // The job (`<service>-service migrate`) runs; the service goes on.
    db::migrate(&db.url, SCHEMA, &service).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("it noticed the migration").unwrap().unwrap();

    // On a schema already at its version it does not wait at all.
    tokio::time::timeout(Duration::from_secs(1), db::await_migrations(&db.url, SCHEMA, &service))
        .await
        .expect("no wait on a migrated schema")
        .unwrap();
}
