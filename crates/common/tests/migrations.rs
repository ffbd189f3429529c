//! Migrating at start-up, or waiting for a migration job (`MIGRATE_ON_START=false`).

use std::time::Duration;

use common::db::{self, Schema};
use common::testing::TestDb;
use sqlx::migrate::Migrator;

const SCHEMA: Schema = Schema { name: "migtest", role: "migtest_svc" };

#[tokio::test]
async fn a_service_told_not_to_migrate_waits_for_the_job() {
    let db = TestDb::create().await;
    let waiting = tokio::spawn({
        let url = db.url.clone();
        async move { db::await_migrations(&url, SCHEMA, &Migrator::DEFAULT).await }
    });
    // Nothing has migrated the schema: the service must not start on it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!waiting.is_finished(), "it started on an unmigrated schema");

    // The job (`<service>-service migrate`) runs; the service goes on.
    db::migrate(&db.url, SCHEMA, &Migrator::DEFAULT).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("it noticed the migration").unwrap().unwrap();

    // On a schema already at its version it does not wait at all.
    tokio::time::timeout(Duration::from_secs(1), db::await_migrations(&db.url, SCHEMA, &Migrator::DEFAULT))
        .await
        .expect("no wait on a migrated schema")
        .unwrap();
}
