//! The PostgreSQL store against the outbox and audit conformance suites
//! (a schema per check), plus what only several instances can show: two
//! stores on separate pools, as two processes, claiming from one queue
//! and appending to one chain. Without `KYCD_TEST_POSTGRES_URL` these
//! print a notice and pass, except under `CI=true`.

use std::collections::HashSet;
use std::sync::Arc;

use kycd_log::audit::suite::run_audit_suite;
use kycd_log::audit::{Audit, AuditKey, NewAudit};
use kycd_log::outbox::suite::{concurrent_claimers_keep_every_lane_in_order, run_outbox_suite};
use kycd_log::outbox::{Holder, NewAction, Outbox};
use kycd_log::postgres::store::PgStore;
use kycd_log::postgres::testing::{url_or_skip, Schemas};
use kycd_log::postgres::{Database, PoolSettings};

async fn store(schemas: &Schemas, keyed: bool) -> Arc<PgStore> {
    let store = PgStore::open(schemas.database().await).await.unwrap();
    if keyed {
        store.set_audit_key(AuditKey::from_bytes([7; 32]));
    }
    Arc::new(store)
}

/// Two stores on one schema, each with its own pool: two instances.
async fn two_instances(schemas: &Schemas) -> (Arc<PgStore>, Arc<PgStore>) {
    let mut out = instances(schemas, 2).await;
    let b = out.pop().unwrap();
    (out.pop().unwrap(), b)
}

/// `n` stores on one schema, each with its own pool: `n` instances.
async fn instances(schemas: &Schemas, n: usize) -> Vec<Arc<PgStore>> {
    let schema = schemas.schema().await;
    let url = schemas.url_of(&schema);
    let mut out = Vec::new();
    for _ in 0..n {
        let db = Database::connect(&url, &PoolSettings::default())
            .await
            .unwrap();
        let s = PgStore::open(db).await.unwrap();
        s.set_audit_key(AuditKey::from_bytes([7; 32]));
        out.push(Arc::new(s));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_store_passes_the_outbox_suite() {
    let Some(url) = url_or_skip("pg_store_passes_the_outbox_suite") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    run_outbox_suite(|| store(&schemas, true)).await;
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_store_passes_the_audit_suite_keyed() {
    let Some(url) = url_or_skip("pg_store_passes_the_audit_suite_keyed") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    run_audit_suite(|| store(&schemas, true)).await;
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_store_passes_the_audit_suite_unkeyed() {
    let Some(url) = url_or_skip("pg_store_passes_the_audit_suite_unkeyed") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    run_audit_suite(|| store(&schemas, false)).await;
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_claiming_from_one_queue_take_each_action_once() {
    let Some(url) = url_or_skip("two_instances_claiming") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let (a, b) = two_instances(&schemas).await;
    const N: usize = 200;
    let actions = (0..N)
        .map(|i| NewAction {
            idempotency_key: format!("k{i}"),
            kind: "didit.update_status".into(),
            session_id: Some(format!("s{i}")),
            decision_id: None,
            payload: serde_json::json!({"i": i}),
            created_at_ms: 1_000,
        })
        .collect();
    assert_eq!(a.enqueue(actions).await.unwrap(), N);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..6 {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        workers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s
                    .claim(
                        &Holder::new(format!("w{w}"), 1),
                        2_000,
                        60_000,
                        7,
                        Vec::new(),
                    )
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|a| a.id));
            }
        });
    }
    let claimed: Vec<String> = workers.join_all().await.into_iter().flatten().collect();
    let distinct: HashSet<&String> = claimed.iter().collect();
    assert_eq!(claimed.len(), N, "every action claimed, none twice");
    assert_eq!(distinct.len(), N);
    schemas.drop_all().await;
}

/// Eight instances, each on its own pool, claiming concurrently: no lane
/// (a session, the endpoint) ever has two actions held at once, and each
/// runs its actions in order. Repeated, since a race shows only sometimes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_on_separate_pools_keep_every_lane_in_order() {
    let Some(url) = url_or_skip("instances_keep_every_lane_in_order") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    for _ in 0..5 {
        concurrent_claimers_keep_every_lane_in_order(instances(&schemas, 8).await).await;
    }
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_appending_audit_records_make_one_chain() {
    let Some(url) = url_or_skip("two_instances_appending") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let (a, b) = two_instances(&schemas).await;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        writers.spawn(async move {
            for i in 0..50 {
                s.audit(vec![NewAudit {
                    at_ms: i,
                    actor: format!("writer-{w}"),
                    action: "test".into(),
                    target: None,
                    details: serde_json::json!({"i": i}),
                }])
                .await
                .unwrap();
            }
        });
    }
    writers.join_all().await;
    let records = a.list_audit(i64::MIN, 0, 1_000).await.unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "dense, one chain");
    let v = b.verify_audit().await.unwrap();
    assert!(v.problem.is_none(), "{:?}", v.problem);
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edited_audit_record_is_found() {
    let Some(url) = url_or_skip("an_edited_audit_record_is_found") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let s = store(&schemas, true).await;
    for i in 0..5 {
        s.audit(vec![NewAudit {
            at_ms: i,
            actor: "kycd".into(),
            action: "test".into(),
            target: None,
            details: serde_json::json!({"i": i}),
        }])
        .await
        .unwrap();
    }
    assert!(s.verify_audit().await.unwrap().problem.is_none());
    sqlx::query("UPDATE audit SET actor = 'someone else' WHERE seq = 3")
        .execute(s.database().pool())
        .await
        .unwrap();
    let v = s.verify_audit().await.unwrap();
    let problem = v.problem.expect("an edit is found").to_string();
    assert!(problem.contains('3'), "names the record: {problem}");
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_newest_audit_records_is_found() {
    let Some(url) = url_or_skip("deleting_the_newest_audit_records_is_found") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let s = store(&schemas, true).await;
    for i in 0..5 {
        s.audit(vec![NewAudit {
            at_ms: i,
            actor: "kycd".into(),
            action: "test".into(),
            target: None,
            details: serde_json::json!({"i": i}),
        }])
        .await
        .unwrap();
    }
    // A valid, shorter chain: only the head row says it was longer.
    sqlx::query("DELETE FROM audit WHERE seq > 3")
        .execute(s.database().pool())
        .await
        .unwrap();
    let v = s.verify_audit().await.unwrap();
    match v.problem {
        Some(kycd_log::audit::Problem::Truncated { anchored, last, .. }) => {
            assert_eq!((anchored, last), (5, 3))
        }
        other => panic!("the truncation must be found: {other:?}"),
    }
    sqlx::query("DELETE FROM audit")
        .execute(s.database().pool())
        .await
        .unwrap();
    assert!(matches!(
        s.verify_audit().await.unwrap().problem,
        Some(kycd_log::audit::Problem::Emptied { .. })
    ));
    schemas.drop_all().await;
}
