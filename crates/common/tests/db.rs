//! What the database helpers tell apart, on a real PostgreSQL.

use common::db::{self, Schema, is_deadlock};
use common::testing::TestDb;
use sqlx::migrate::Migrator;

const SCHEMA: Schema = Schema { name: "dbtest", role: "dbtest_svc" };

#[tokio::test]
async fn a_deadlock_is_told_from_other_errors() {
    let db = TestDb::create().await;
    db::migrate(&db.url, SCHEMA, &Migrator::DEFAULT).await.unwrap();
    let pool = db::connect(&db.url, SCHEMA, 2).await.unwrap();
    sqlx::query("CREATE TABLE rows (id INT PRIMARY KEY, n INT NOT NULL)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO rows VALUES (1, 0), (2, 0)").execute(&pool).await.unwrap();

    // Two transactions take the same two rows in opposite orders: PostgreSQL ends one.
    let (mut a, mut b) = (pool.begin().await.unwrap(), pool.begin().await.unwrap());
    sqlx::query("UPDATE rows SET n = n + 1 WHERE id = 1").execute(&mut *a).await.unwrap();
    sqlx::query("UPDATE rows SET n = n + 1 WHERE id = 2").execute(&mut *b).await.unwrap();
    let (first, second) = tokio::join!(
        sqlx::query("UPDATE rows SET n = n + 1 WHERE id = 2").execute(&mut *a),
        sqlx::query("UPDATE rows SET n = n + 1 WHERE id = 1").execute(&mut *b),
    );
    let ended: Vec<sqlx::Error> = [first, second].into_iter().filter_map(Result::err).collect();
    assert_eq!(ended.len(), 1, "exactly one side is ended");
    assert!(is_deadlock(&ended[0]), "{:?}", ended[0]);

    let unique = sqlx::query("INSERT INTO rows VALUES (3, 0), (3, 0)").execute(&pool).await.unwrap_err();
    assert!(!is_deadlock(&unique));
    assert!(!is_deadlock(&sqlx::Error::RowNotFound));
}
