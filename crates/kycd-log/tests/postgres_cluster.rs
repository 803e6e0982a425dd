//! Instances and leases on the real PostgreSQL that
//! `KYCD_TEST_POSTGRES_URL` names (a schema per test): the registry, the
//! lease rules and the fence that makes a former owner's commit write
//! nothing. Without the variable these print a notice and pass, except
//! under `CI=true`.

use std::time::Duration;

use kycd_log::postgres::cluster::{Cluster, ClusterError};
use kycd_log::postgres::testing::{url_or_skip, Schemas};
use kycd_log::postgres::Database;

const TTL: Duration = Duration::from_secs(30);

async fn setup(test: &str) -> Option<(Schemas, Database)> {
    let url = url_or_skip(test)?;
    let schemas = Schemas::new(&url).await;
    let db = schemas.database().await;
    Some((schemas, db))
}

#[tokio::test]
async fn a_lease_has_one_owner_and_each_acquisition_a_new_epoch() {
    let Some((schemas, db)) = setup("postgres_cluster").await else {
        return;
    };
    let a = Cluster::join(db.clone(), "a", "test").await.unwrap();
    let b = Cluster::join(db.clone(), "b", "test").await.unwrap();
    let first = a
        .acquire("timers", TTL)
        .await
        .unwrap()
        .expect("free: a takes it");
    assert_eq!(b.acquire("timers", TTL).await.unwrap(), None, "held by a");
    assert!(a.renew(&first, TTL).await.unwrap());
    assert!(
        !b.renew(&first, TTL).await.unwrap(),
        "b cannot renew a's lease"
    );
    a.release(&first).await.unwrap();
    assert!(!a.renew(&first, TTL).await.unwrap(), "released: gone");
    let second = b
        .acquire("timers", TTL)
        .await
        .unwrap()
        .expect("released: b takes it");
    assert!(second.epoch > first.epoch, "{second:?} after {first:?}");
    let leases = a.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].owner.as_deref(), Some("b"));
    assert_eq!(leases[0].epoch, second.epoch);
    assert!(!leases[0].expired);
    schemas.drop_all().await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_former_owner_cannot_renew_it() {
    let Some((schemas, db)) = setup("postgres_cluster").await else {
        return;
    };
    let a = Cluster::join(db.clone(), "a", "test").await.unwrap();
    let b = Cluster::join(db.clone(), "b", "test").await.unwrap();
    // A lease with no time to live is expired as soon as it is taken.
    let old = a
        .acquire("partition/0", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let new = loop {
        if let Some(l) = b.acquire("partition/0", TTL).await.unwrap() {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::task::yield_now().await;
    };
    assert!(new.epoch > old.epoch);
    assert!(
        !a.renew(&old, TTL).await.unwrap(),
        "taken over: a's renewal fails"
    );
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_one_of_many_racing_instances_acquires_a_free_lease() {
    let Some((schemas, db)) = setup("postgres_cluster").await else {
        return;
    };
    let mut members = Vec::new();
    for i in 0..8 {
        members.push(
            Cluster::join(db.clone(), &format!("i{i}"), "test")
                .await
                .unwrap(),
        );
    }
    let mut races = tokio::task::JoinSet::new();
    for m in members {
        races.spawn(async move { m.acquire("timers", TTL).await.unwrap() });
    }
    let won = races.join_all().await;
    assert_eq!(won.iter().filter(|w| w.is_some()).count(), 1, "{won:?}");
    schemas.drop_all().await;
}

#[tokio::test]
async fn a_second_start_under_the_same_id_stops_the_first() {
    let Some((schemas, db)) = setup("postgres_cluster").await else {
        return;
    };
    let first = Cluster::join(db.clone(), "kycd-a", "1").await.unwrap();
    first.heartbeat().await.unwrap();
    let second = Cluster::join(db.clone(), "kycd-a", "2").await.unwrap();
    assert!(second.epoch() > first.epoch());
    match first.heartbeat().await {
        Err(ClusterError::Replaced { ours, theirs, .. }) => {
            assert_eq!((ours, theirs), (first.epoch(), second.epoch()))
        }
        other => panic!("the first process must learn it was replaced: {other:?}"),
    }
    second.heartbeat().await.unwrap();
    let instances = second.instances().await.unwrap();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].version, "2");
    assert!(instances[0].heartbeat_age_ms >= 0);
    schemas.drop_all().await;
}

#[tokio::test]
async fn a_former_owners_commit_writes_nothing_once_its_lease_is_taken_over() {
    use kycd_log::postgres::store::PgStore;
    use kycd_log::store::{ProjectionBatch, SessionRecord, Store, StoreError};
    let Some((schemas, db)) = setup("postgres_cluster").await else {
        return;
    };
    let store = PgStore::open(db.clone()).await.unwrap();
    let a = Cluster::join(db.clone(), "a", "test").await.unwrap();
    let b = Cluster::join(db.clone(), "b", "test").await.unwrap();
    let session = |id: &str, seq: u64| SessionRecord {
        seq,
        session_id: id.to_owned(),
        vendor_data: None,
        status: "In Progress".into(),
        workflow_id: None,
        created_at_ms: 1,
        updated_at_ms: 1,
        doc: serde_json::json!({}),
    };
    let batch = |id: &str, seq, fence| ProjectionBatch {
        sessions: vec![session(id, seq)],
        fences: vec![fence],
        ..ProjectionBatch::default()
    };
    // a owns partition 0 and commits under it.
    let old = a
        .acquire("partition/0", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    store
        .commit("sessions", 0, 1, batch("first", 1, old.fence(a.id())))
        .await
        .unwrap();
    // a pauses; its lease expires and b takes it over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let new = loop {
        if let Some(l) = b.acquire("partition/0", TTL).await.unwrap() {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::task::yield_now().await;
    };
    // a wakes and commits its next batch under the old lease: refused.
    match store
        .commit("sessions", 1, 2, batch("stale", 2, old.fence(a.id())))
        .await
    {
        Err(StoreError::LeaseLost { epoch, now, .. }) => {
            assert_eq!(epoch, old.epoch);
            assert_eq!(now, None, "held by another owner");
        }
        other => panic!("a former owner's commit must be refused: {other:?}"),
    }
    assert_eq!(
        store.get_session("stale").await.unwrap(),
        None,
        "wrote nothing"
    );
    assert_eq!(store.consumer_offset("sessions").await.unwrap(), 1);
    // The new owner commits from where a stopped.
    store
        .commit("sessions", 1, 2, batch("second", 2, new.fence(b.id())))
        .await
        .unwrap();
    assert!(store.get_session("second").await.unwrap().is_some());
    assert_eq!(store.consumer_offset("sessions").await.unwrap(), 2);
    schemas.drop_all().await;
}

#[tokio::test]
async fn a_restarted_instance_takes_its_leases_back_at_once_and_the_old_run_cannot() {
    let Some((schemas, db)) = setup("postgres_cluster").await else {
        return;
    };
    let old_run = Cluster::join(db.clone(), "kycd-a", "1").await.unwrap();
    let held = old_run.acquire("partition/0", TTL).await.unwrap().unwrap();
    let other = Cluster::join(db.clone(), "kycd-b", "1").await.unwrap();
    let new_run = Cluster::join(db.clone(), "kycd-a", "1").await.unwrap();
    assert_eq!(
        other.acquire("partition/0", TTL).await.unwrap(),
        None,
        "not expired"
    );
    let back = new_run
        .acquire("partition/0", TTL)
        .await
        .unwrap()
        .expect("the same id, started again, takes it back without waiting");
    assert!(back.epoch > held.epoch);
    assert!(!old_run.renew(&held, TTL).await.unwrap());
    assert_eq!(
        old_run.acquire("partition/0", TTL).await.unwrap(),
        None,
        "the earlier run cannot take it back in turn"
    );
    schemas.drop_all().await;
}

/// Each decision records the instance whose lease its batch was committed
/// under: a, then b once b took partition 0 over. A batch committed
/// without a fence names nobody.
#[tokio::test]
async fn each_decision_records_the_instance_that_committed_it() {
    use kycd_log::postgres::store::PgStore;
    use kycd_log::store::{DecisionQuery, DecisionRecord, ProjectionBatch, Store};
    let Some((schemas, db)) = setup("postgres_cluster").await else {
        return;
    };
    let store = PgStore::open(db.clone()).await.unwrap();
    let a = Cluster::join(db.clone(), "kycd-a", "test").await.unwrap();
    let b = Cluster::join(db.clone(), "kycd-b", "test").await.unwrap();
    let decision = |offset: u64| DecisionRecord {
        id: format!("dec_{offset}"),
        event_offset: offset,
        session_id: format!("s{offset}"),
        subject: None,
        policy_version: "v1".into(),
        shadow: false,
        outcome: "approve".into(),
        score: 0.0,
        decided_at_ms: 1,
        // What the projector makes: it does not know who commits.
        decided_by: None,
        doc: serde_json::json!({"outcome": "approve"}),
    };
    let batch = |offset: u64, fence: Option<_>| ProjectionBatch {
        decisions: vec![decision(offset)],
        fences: fence.into_iter().collect(),
        ..ProjectionBatch::default()
    };
    let first = a.acquire("partition/0", TTL).await.unwrap().unwrap();
    store
        .commit("sessions", 0, 1, batch(1, Some(first.fence(a.id()))))
        .await
        .unwrap();
    // a stops and hands the lease back; b takes it over.
    a.release(&first).await.unwrap();
    let second = b.acquire("partition/0", TTL).await.unwrap().unwrap();
    store
        .commit("sessions", 1, 2, batch(2, Some(second.fence(b.id()))))
        .await
        .unwrap();
    store
        .commit("sessions", 2, 3, batch(3, None))
        .await
        .unwrap();
    let listed = store
        .list_decisions(DecisionQuery {
            limit: 10,
            ..DecisionQuery::default()
        })
        .await
        .unwrap();
    let by: Vec<(u64, Option<&str>)> = listed
        .iter()
        .map(|d| (d.event_offset, d.decided_by.as_deref()))
        .collect();
    assert_eq!(
        by,
        [(3, None), (2, Some("kycd-b")), (1, Some("kycd-a"))],
        "newest first"
    );
    let one = store.get_decision("dec_1").await.unwrap().unwrap();
    assert_eq!(one.decided_by.as_deref(), Some("kycd-a"));
    let on_event = store
        .decision_for_event(2, "s2", false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_event.decided_by.as_deref(), Some("kycd-b"));
    schemas.drop_all().await;
}
