//! The PostgreSQL backend against every store-side conformance suite and
//! the migrations, in the server `KYCD_TEST_POSTGRES_URL` names (one
//! schema per check). Without it these print a notice and pass, except
//! under `CI=true`, where they fail.
//!
//! ```text
//! KYCD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test --workspace --locked --test postgres_store
//! ```

use std::sync::Arc;

use kycd_log::access::suite::run_access_suite;
use kycd_log::audit::{AuditKey, NewAudit};
use kycd_log::cases::suite::run_cases_suite;
use kycd_log::postgres::store::PgStore;
use kycd_log::postgres::testing::{url_or_skip, Schemas};
use kycd_log::postgres::{Database, PoolSettings};
use kycd_log::store::suite::run_store_suite;
use kycd_log::store::{
    DecisionRecord, ProjectionBatch, SessionRecord, Store, StoreError, POLICY_MARK_SUFFIX,
};

/// The versions this build migrates a new database to (numbers may skip:
/// each branch takes its own).
const MIGRATED: [i32; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_apply_once_in_order_even_when_instances_start_together() {
    let Some(url) = url_or_skip("postgres_store") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let url = schemas.url_of(&schema);
    let settings = kycd_log::postgres::PoolSettings::default();
    // Three instances starting at once: the advisory lock lets one migrate.
    let (a, b, c) = tokio::join!(
        kycd_log::postgres::Database::connect(&url, &settings),
        kycd_log::postgres::Database::connect(&url, &settings),
        kycd_log::postgres::Database::connect(&url, &settings),
    );
    let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.applied_migrations().await.unwrap(), MIGRATED.to_vec());
    // Connecting again applies nothing.
    let again = kycd_log::postgres::Database::connect(&url, &settings)
        .await
        .unwrap();
    assert_eq!(again.applied_migrations().await.unwrap(), MIGRATED.to_vec());
    schemas.drop_all().await;
}

/// Runs `sql` on `db`'s schema (a test's way of making a database look
/// as another build left it).
async fn execute(db: &Database, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A new schema, migrated: its URL and database.
async fn migrated(test: &str) -> Option<(Schemas, String, Database)> {
    let url = url_or_skip(test)?;
    let schemas = Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let url = schemas.url_of(&schema);
    let db = Database::connect(&url, &PoolSettings::default())
        .await
        .unwrap();
    Some((schemas, url, db))
}

/// A database migrated by a build that applied the numbers out of order
/// (version 10 arrived on a branch merged before 9's): the start applies 9,
/// though a later version is recorded.
#[tokio::test]
async fn a_version_missing_below_the_newest_recorded_one_is_applied() {
    let Some((schemas, url, db)) =
        migrated("a_version_missing_below_the_newest_recorded_one_is_applied").await
    else {
        return;
    };
    // Migration 9 undone: its tables and its record.
    execute(
        &db,
        "DROP TABLE cursors; DROP TABLE reconcile_fetches;
         DELETE FROM kycd_migrations WHERE version = 9",
    )
    .await;
    db.close().await;
    let again = Database::connect(&url, &PoolSettings::default())
        .await
        .unwrap();
    assert_eq!(again.applied_migrations().await.unwrap(), MIGRATED.to_vec());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cursors")
        .fetch_one(again.pool())
        .await
        .expect("migration 9 applied again");
    assert_eq!(rows, 0);
    schemas.drop_all().await;
}

/// A database that records a version this build does not know was
/// migrated by a newer kycd: the start is refused, applying nothing (not
/// even a version it does know that is missing).
#[tokio::test]
async fn a_database_recording_an_unknown_version_is_refused_and_left_alone() {
    let Some((schemas, url, db)) =
        migrated("a_database_recording_an_unknown_version_is_refused_and_left_alone").await
    else {
        return;
    };
    execute(
        &db,
        "DROP TABLE cursors; DROP TABLE reconcile_fetches;
         DELETE FROM kycd_migrations WHERE version = 9;
         INSERT INTO kycd_migrations (version, name) VALUES (9999, 'from a newer kycd')",
    )
    .await;
    match Database::connect(&url, &PoolSettings::default()).await {
        Err(StoreError::Corrupt(m)) => {
            assert!(m.contains("9999") && m.contains("newer kycd"), "{m}");
        }
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("a newer kycd's schema must be refused"),
    }
    let applied: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM kycd_migrations ORDER BY version")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(applied, [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 9999]);
    let cursors: Option<String> = sqlx::query_scalar("SELECT to_regclass('cursors')::text")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(cursors, None, "nothing applied");
    schemas.drop_all().await;
}

/// A fresh, keyed store in its own schema of `schemas`.
async fn keyed(schemas: &Schemas) -> Arc<PgStore> {
    let store = PgStore::open(schemas.database().await).await.unwrap();
    store.set_audit_key(AuditKey::from_bytes([7; 32]));
    Arc::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_store_passes_the_store_suite() {
    let Some(url) = url_or_skip("pg_store_passes_the_store_suite") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    run_store_suite(|| async { keyed(&schemas).await as Arc<dyn Store> }).await;
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_store_passes_the_cases_suite() {
    let Some(url) = url_or_skip("pg_store_passes_the_cases_suite") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    run_cases_suite(|| keyed(&schemas)).await;
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_store_passes_the_access_suite() {
    let Some(url) = url_or_skip("pg_store_passes_the_access_suite") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    run_access_suite(|| keyed(&schemas)).await;
    schemas.drop_all().await;
}

/// Two instances (two pools on one schema, as two processes would have)
/// commit the same consumer from the same offset at once, each several
/// times over: exactly one commit of each round applies, and the refused
/// one wrote nothing (no session, no decision, no audit record, no mark).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_committing_one_offset_apply_exactly_one() {
    let Some(url) = url_or_skip("two_instances_committing_one_offset_apply_exactly_one") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let url = schemas.url_of(&schema);
    let settings = PoolSettings::default();
    let open = || async {
        let db = Database::connect(&url, &settings).await.unwrap();
        let store = PgStore::open(db).await.unwrap();
        store.set_audit_key(AuditKey::from_bytes([7; 32]));
        Arc::new(store)
    };
    let (a, b) = (open().await, open().await);
    let batch = |who: &str, round: u64| ProjectionBatch {
        sessions: vec![SessionRecord {
            seq: round + 1,
            session_id: format!("{who}-{round}"),
            vendor_data: Some("u".into()),
            status: "Approved".into(),
            workflow_id: None,
            created_at_ms: 1,
            updated_at_ms: 1,
            doc: serde_json::json!({}),
        }],
        decisions: vec![DecisionRecord {
            id: format!("dec_{who}_{round}"),
            event_offset: round + 1,
            session_id: format!("{who}-{round}"),
            subject: Some("u".into()),
            policy_version: "v1".into(),
            shadow: false,
            outcome: "approve".into(),
            score: 0.0,
            decided_at_ms: 1,
            decided_by: None,
            doc: serde_json::json!({}),
        }],
        audit: vec![NewAudit {
            at_ms: 1,
            actor: "projector".into(),
            action: "decision".into(),
            target: Some(format!("dec_{who}_{round}")),
            details: serde_json::json!({}),
        }],
        policy_offset: Some(round * 10 + if who == "a" { 1 } else { 2 }),
        ..ProjectionBatch::default()
    };
    const ROUNDS: u64 = 20;
    for round in 0..ROUNDS {
        let (from, to) = (round * 10, round * 10 + 10);
        let (ra, rb) = tokio::join!(
            a.commit("p", from, to, batch("a", round)),
            b.commit("p", from, to, batch("b", round)),
        );
        let winner = match (ra, rb) {
            (Ok(()), Err(StoreError::OffsetConflict { current, .. })) if current == to => "a",
            (Err(StoreError::OffsetConflict { current, .. }), Ok(())) if current == to => "b",
            other => panic!("round {round}: expected one success and one conflict: {other:?}"),
        };
        let loser = if winner == "a" { "b" } else { "a" };
        assert_eq!(a.consumer_offset("p").await.unwrap(), to);
        assert_eq!(
            b.consumer_offset(&format!("p{POLICY_MARK_SUFFIX}"))
                .await
                .unwrap(),
            round * 10 + if winner == "a" { 1 } else { 2 },
            "the winner's policy mark"
        );
        for (who, applied) in [(winner, true), (loser, false)] {
            let session = a.get_session(&format!("{who}-{round}")).await.unwrap();
            let decision = b.get_decision(&format!("dec_{who}_{round}")).await.unwrap();
            assert_eq!(session.is_some(), applied, "round {round}: {who}'s session");
            assert_eq!(
                decision.is_some(),
                applied,
                "round {round}: {who}'s decision"
            );
        }
    }
    // One audit record per round, one chain: nothing of a refused commit.
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit")
        .fetch_one(a.database().pool())
        .await
        .unwrap();
    assert_eq!(audited, ROUNDS as i64);
    let (a_head, b_head) = (
        a.subscribe_audit_head().borrow().clone(),
        b.subscribe_audit_head().borrow().clone(),
    );
    let newest = [a_head, b_head].into_iter().flatten().map(|h| h.seq).max();
    assert_eq!(newest, Some(ROUNDS), "the chain's end is the last round's");
    schemas.drop_all().await;
}
