//! The PostgreSQL event log against the conformance suite, plus what only
//! a shared backend has: several instances appending to one log, wake-ups
//! across instances, and a connection lost in the middle of an append.
//! In the server `KYCD_TEST_POSTGRES_URL` names (one schema per check);
//! without it these print a notice and pass, except under `CI=true`.
//!
//! ```text
//! KYCD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo test -p kycd-log --test postgres_log
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kycd_core::EventId;
use kycd_log::postgres::log::{PgLog, PgLogOptions};
use kycd_log::postgres::testing::{url_or_skip, Schemas};
use kycd_log::postgres::{Database, PoolSettings};
use kycd_log::suite::{run_event_log_suite, sample_event};
use kycd_log::{Appended, EventLog, LogError, StoredEvent};
use sqlx::Connection;
use tokio::task::JoinSet;

/// How long a test waits for something that should happen at once.
const DEADLINE: Duration = Duration::from_secs(20);

/// Two pools on one schema, as two kycd processes would have.
async fn pools_on_one_schema(schemas: &Schemas) -> (String, Database, Database) {
    let schema = schemas.schema().await;
    let url = schemas.url_of(&schema);
    let settings = PoolSettings {
        max_connections: 8,
        ..PoolSettings::default()
    };
    let a = Database::connect(&url, &settings).await.unwrap();
    let b = Database::connect(&url, &settings).await.unwrap();
    (schema, a, b)
}

async fn open(db: Database, options: PgLogOptions) -> Arc<PgLog> {
    Arc::new(PgLog::open(db, options).await.unwrap())
}

async fn read_all(log: &dyn EventLog) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |e: &StoredEvent| e.offset);
        let page = log.read(after, 1000).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_log_passes_the_event_log_suite() {
    let Some(url) = url_or_skip("pg_log_passes_the_event_log_suite") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let made = &schemas;
    run_event_log_suite(move || async move {
        let db = made.database().await;
        open(db, PgLogOptions::default()).await as Arc<dyn EventLog>
    })
    .await;
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_dense_log_and_one_dedupe() {
    let Some(url) = url_or_skip("two_instances_share_one_dense_log_and_one_dedupe") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let (_, db_a, db_b) = pools_on_one_schema(&schemas).await;
    let a = open(db_a, PgLogOptions::default()).await;
    let b = open(db_b, PgLogOptions::default()).await;
    let instances: [Arc<dyn EventLog>; 2] = [a.clone(), b.clone()];

    const OWN: u64 = 300;
    const SHARED_KEYS: u64 = 40;
    const TRIES_PER_INSTANCE: u64 = 3;
    let mut tasks = JoinSet::new();
    for n in 0..OWN {
        let log = Arc::clone(&instances[(n % 2) as usize]);
        tasks.spawn(async move {
            let key = format!("own-{n}");
            (None, log.append(sample_event(n, &[&key])).await.unwrap())
        });
    }
    // The same retry reaching both instances, several times each.
    for key in 0..SHARED_KEYS {
        for attempt in 0..TRIES_PER_INSTANCE * 2 {
            let log = Arc::clone(&instances[(attempt % 2) as usize]);
            tasks.spawn(async move {
                let shared = format!("retry-{key}");
                let event = sample_event(10_000 + key * 10 + attempt, &[&shared]);
                (Some(key), log.append(event).await.unwrap())
            });
        }
    }
    let mut offsets = Vec::new();
    let mut winners: HashMap<u64, EventId> = HashMap::new();
    let mut duplicates = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (shared, appended) = joined.unwrap();
        match (shared, appended) {
            (_, Appended::New { offset, id }) => {
                offsets.push(offset);
                if let Some(key) = shared {
                    if let Some(previous) = winners.insert(key, id.clone()) {
                        panic!("key {key} has two new events: {previous} and {id}");
                    }
                }
            }
            (Some(key), Appended::Duplicate { id }) => duplicates.push((key, id)),
            (None, duplicate) => panic!("an event with its own key deduped: {duplicate:?}"),
        }
    }
    let n = OWN + SHARED_KEYS;
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (1..=n).collect::<Vec<_>>(),
        "offsets are dense from 1 across instances"
    );
    assert_eq!(winners.len() as u64, SHARED_KEYS, "one new event per key");
    assert_eq!(
        duplicates.len() as u64,
        SHARED_KEYS * (TRIES_PER_INSTANCE * 2 - 1)
    );
    for (key, id) in &duplicates {
        assert_eq!(Some(id), winners.get(key), "a duplicate names the winner");
    }

    let from_a = read_all(&*a).await;
    let from_b = read_all(&*b).await;
    assert_eq!(from_a.len() as u64, n);
    assert_eq!(from_a, from_b, "both instances read the same log");
    let ids: HashSet<&EventId> = from_a.iter().map(|e| &e.id).collect();
    assert!(winners.values().all(|id| ids.contains(id)));
    for event in from_a.iter().step_by(17) {
        assert_eq!(a.get(&event.id).await.unwrap().as_ref(), Some(event));
        assert_eq!(b.get(&event.id).await.unwrap().as_ref(), Some(event));
    }
    assert_eq!(a.head().await.unwrap(), n);
    assert_eq!(b.head().await.unwrap(), n);
    // Group commit: concurrent appends shared transactions.
    let (stats_a, stats_b) = (a.stats(), b.stats());
    assert!(
        stats_a.largest_batch > 1 || stats_b.largest_batch > 1,
        "appends were committed in batches: {stats_a:?} {stats_b:?}"
    );
    assert_eq!(
        stats_a.requests + stats_b.requests,
        OWN + SHARED_KEYS * TRIES_PER_INSTANCE * 2
    );
    assert_eq!(stats_a.failed_batches + stats_b.failed_batches, 0);
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_on_one_instance_wakes_a_subscriber_of_another() {
    let Some(url) = url_or_skip("an_append_on_one_instance_wakes_a_subscriber_of_another") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let (_, db_a, db_b) = pools_on_one_schema(&schemas).await;
    // A log on another schema, whose appends must not move ours.
    let elsewhere = open(schemas.database().await, PgLogOptions::default()).await;
    // The poll is out of the way, so only the notification can wake B.
    let no_poll = PgLogOptions {
        poll_every: Duration::from_secs(3600),
        ..PgLogOptions::default()
    };
    let a = open(db_a, no_poll.clone()).await;
    let b = open(db_b, no_poll).await;
    let mut woken = b.subscribe();
    assert_eq!(*woken.borrow_and_update(), 0);

    for n in 0..3 {
        elsewhere.append(sample_event(n, &[])).await.unwrap();
    }
    let Appended::New { offset, .. } = a.append(sample_event(1, &["w1"])).await.unwrap() else {
        panic!("a fresh key deduped");
    };
    assert_eq!(offset, 1);
    let seen = tokio::time::timeout(DEADLINE, woken.wait_for(|head| *head >= offset))
        .await
        .expect("B's subscriber woken by A's append")
        .map(|head| *head)
        .unwrap();
    assert_eq!(seen, 1, "another schema's appends do not move the head");

    // And again, for a batch of several.
    let mut tasks = JoinSet::new();
    for n in 2..12 {
        let a = Arc::clone(&a);
        tasks.spawn(async move { a.append(sample_event(n, &[])).await.unwrap() });
    }
    while tasks.join_next().await.is_some() {}
    let seen = tokio::time::timeout(DEADLINE, woken.wait_for(|head| *head >= 11))
        .await
        .expect("B's subscriber follows A's appends")
        .map(|head| *head)
        .unwrap();
    assert_eq!(seen, 11);
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_whose_connection_dies_midway_fails_cleanly_and_the_next_succeeds() {
    let Some(url) = url_or_skip("an_append_whose_connection_dies_midway") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let schema = schemas.schema().await;
    // A name of its own, so that killing its connections kills no other
    // test's.
    let application_name = format!("pg_log_kill_{}", std::process::id());
    let db = Database::connect(
        &schemas.url_of(&schema),
        &PoolSettings {
            max_connections: 8,
            application_name: application_name.clone(),
        },
    )
    .await
    .unwrap();
    let log = open(db, PgLogOptions::default()).await;
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let admin_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut admin)
        .await
        .unwrap();

    // An uncommitted row holding the append's key: the append takes the
    // head lock, finds no such key committed, moves the head, inserts its
    // event, and then waits on the key's uniqueness check. That is where
    // its connection is killed.
    let mut blocker = admin.begin().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".dedupe (key, event_pos) VALUES ('mid', 1000)"
    ))
    .execute(&mut *blocker)
    .await
    .unwrap();
    let mut head = log.subscribe();
    let appending = {
        let log = Arc::clone(&log);
        tokio::spawn(async move { log.append(sample_event(1, &["mid"])).await })
    };
    let mut checker = sqlx::PgConnection::connect(&url).await.unwrap();
    let waiting = tokio::time::timeout(DEADLINE, async {
        loop {
            let pids: Vec<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(admin_pid)
            .fetch_all(&mut checker)
            .await
            .unwrap();
            if let Some(pid) = pids.first() {
                break *pid;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the append reaches its key insert");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(waiting)
        .fetch_one(&mut checker)
        .await
        .unwrap();
    assert!(terminated);
    let failed = tokio::time::timeout(DEADLINE, appending)
        .await
        .expect("the append returns")
        .unwrap();
    assert!(
        matches!(failed, Err(LogError::Unavailable(_))),
        "a lost connection is unavailable: {failed:?}"
    );
    blocker.rollback().await.unwrap();

    assert_eq!(log.head().await.unwrap(), 0, "the head did not move");
    assert!(log.read(0, 10).await.unwrap().is_empty(), "nothing visible");
    assert_eq!(*head.borrow_and_update(), 0, "no subscriber was told");
    let in_db: i64 = sqlx::query_scalar(&format!(
        "SELECT (SELECT count(*) FROM \"{schema}\".events) + (SELECT count(*) FROM \"{schema}\".dedupe)"
    ))
    .fetch_one(&mut checker)
    .await
    .unwrap();
    assert_eq!(in_db, 0, "no event and no key left behind");

    // The retry succeeds, with the first offset, and so do later appends
    // after every connection of the pool was killed while idle.
    let retried = log.append(sample_event(1, &["mid"])).await.unwrap();
    assert_eq!(
        retried,
        Appended::New {
            offset: 1,
            id: retried.id().clone()
        }
    );
    // The pids first, then the kill: in one statement, the server may call
    // pg_terminate_backend before it filters by name.
    let killed: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(&application_name)
            .fetch_all(&mut checker)
            .await
            .unwrap();
    assert!(!killed.is_empty());
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
        .bind(&killed)
        .execute(&mut checker)
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(&killed)
                    .fetch_one(&mut checker)
                    .await
                    .unwrap();
            if left == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the pool's connections end");
    let after = log.append(sample_event(2, &["after"])).await.unwrap();
    assert!(after.is_new());
    assert_eq!(log.read(0, 10).await.unwrap().len(), 2);
    log.probe_write().await.unwrap();
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_character_postgresql_cannot_store_fails_only_its_own_append() {
    let Some(url) = url_or_skip("a_nul_character_postgresql_cannot_store") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let log = open(schemas.database().await, PgLogOptions::default()).await;
    let mut nul_session = sample_event(1, &["n1"]);
    nul_session.session_id = Some("sess\0".into());
    let nul_key = sample_event(2, &["k\0"]);
    let (a, b, c) = tokio::join!(
        log.append(nul_session),
        log.append(nul_key),
        log.append(sample_event(3, &["fine"]))
    );
    assert!(matches!(a, Err(LogError::Corrupt(_))), "{a:?}");
    assert!(matches!(b, Err(LogError::Corrupt(_))), "{b:?}");
    let stored = log.read(0, 10).await.unwrap();
    assert_eq!(stored.len(), 1, "only the storable event is stored");
    assert_eq!(
        c.unwrap(),
        Appended::New {
            offset: 1,
            id: stored[0].id.clone()
        }
    );
    schemas.drop_all().await;
}

fn partitioned(n: u32) -> PgLogOptions {
    PgLogOptions {
        partitions: Some(n),
        ..PgLogOptions::default()
    }
}

fn delivery(n: u64, session: &str, vendor: Option<&str>) -> kycd_log::NewEvent {
    let body = match vendor {
        Some(v) => {
            format!(r#"{{"session_id":"{session}","status":"Approved","vendor_data":"{v}"}}"#)
        }
        None => format!(r#"{{"session_id":"{session}","status":"In Progress"}}"#),
    };
    kycd_log::NewEvent {
        session_id: Some(session.to_owned()),
        body: body.into_bytes(),
        ..sample_event(n, &[])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_route_by_customer_and_keep_each_sessions_home() {
    use kycd_log::route::{hash, partition_of};
    let Some(url) = url_or_skip("partitions_route_by_customer_and_keep_each_sessions_home") else {
        return;
    };
    const N: u32 = 16;
    let schemas = Schemas::new(&url).await;
    let (_, db_a, db_b) = pools_on_one_schema(&schemas).await;
    let a = open(db_a.clone(), partitioned(N)).await;
    let b = open(db_b, partitioned(N)).await;
    let customer = |v: &str| Some(partition_of(hash(v), N));

    // Sessions whose first delivery has no vendor_data and whose later ones
    // do, racing from two instances: each keeps one home, its id's.
    let mut tasks = JoinSet::new();
    for s in 0..60u64 {
        for (i, vendor) in [None, Some(format!("user-{s}")), Some(format!("user-{s}"))]
            .into_iter()
            .enumerate()
        {
            let log: Arc<dyn EventLog> = if (s + i as u64).is_multiple_of(2) {
                a.clone()
            } else {
                b.clone()
            };
            tasks.spawn(async move {
                let session = format!("late-{s}");
                // The first delivery is appended before the others start.
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                log.append(delivery(s * 10 + i as u64, &session, vendor.as_deref()))
                    .await
                    .unwrap()
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let events = read_all(&*a).await;
    let mut homes: HashMap<String, HashSet<Option<u32>>> = HashMap::new();
    for e in &events {
        homes
            .entry(e.session_id.clone().unwrap())
            .or_default()
            .insert(e.partition);
    }
    assert_eq!(homes.len(), 60);
    for (session, parts) in &homes {
        assert_eq!(parts.len(), 1, "{session} has one home: {parts:?}");
        let first = events
            .iter()
            .find(|e| e.session_id.as_deref() == Some(session))
            .unwrap();
        let first_vendor = std::str::from_utf8(&first.body)
            .unwrap()
            .contains("vendor_data");
        let expected = if first_vendor {
            customer(&format!("user-{}", &session["late-".len()..]))
        } else {
            customer(session)
        };
        assert_eq!(parts.iter().next().unwrap(), &expected, "{session}");
    }

    // A customer's sessions share a partition; kycd's own events about a
    // session follow it; a subject's write goes to its customer; events
    // about no session reach every partition.
    let head = a.head().await.unwrap();
    let append = |e: kycd_log::NewEvent| {
        let log = a.clone();
        async move { log.append(e).await.unwrap() }
    };
    append(delivery(1001, "cust-1", Some("user-1"))).await;
    append(delivery(1002, "cust-2", Some("user-1"))).await;
    append(kycd_log::NewEvent {
        source: kycd_log::EventSource::Internal,
        kind: "kycd.review".into(),
        body: br#"{"vendor_data":"someone-else"}"#.to_vec(),
        ..delivery(1003, "cust-2", None)
    })
    .await;
    append(kycd_log::NewEvent {
        source: kycd_log::EventSource::Subject,
        kind: "subject.updated".into(),
        session_id: None,
        body: br#"{"vendor_data":"user-1","attributes":{}}"#.to_vec(),
        ..sample_event(1004, &[])
    })
    .await;
    append(kycd_log::NewEvent {
        source: kycd_log::EventSource::Internal,
        kind: "kycd.policy.activated".into(),
        session_id: None,
        ..sample_event(1005, &[])
    })
    .await;
    // A step-up session (kycd names its original in the metadata, which
    // Didit echoes) goes where its original lives, even when the original
    // has no vendor_data and the step-up's own id hashes elsewhere.
    let step_up = |n: u64, session: &str, original: &str| {
        kycd_log::NewEvent {
        body: format!(
            r#"{{"session_id":"{session}","status":"Approved","metadata":{{"kycd_step_up_of":"{original}"}}}}"#
        )
        .into_bytes(),
        ..delivery(n, session, None)
    }
    };
    append(delivery(1006, "orig-1", None)).await;
    append(step_up(1007, "step-1", "orig-1")).await;
    let tail = a.read(head, 100).await.unwrap();
    let parts: Vec<Option<u32>> = tail.iter().map(|e| e.partition).collect();
    let k = customer("user-1");
    let orig = customer("orig-1");
    assert_ne!(
        orig,
        customer("step-1"),
        "the test needs ids that hash apart"
    );
    assert_eq!(parts, vec![k, k, k, k, None, orig, orig]);

    // Reading by partition: its events and those every partition reads,
    // complete to the offset returned.
    let k = k.unwrap();
    let all = read_all(&*a).await;
    let (mine, through) = b.read_partitions(0, 10_000, &[k]).await.unwrap();
    let expected: Vec<&StoredEvent> = all
        .iter()
        .filter(|e| e.partition.is_none_or(|p| p == k))
        .collect();
    assert_eq!(mine.iter().collect::<Vec<_>>(), expected);
    assert_eq!(
        through,
        a.head().await.unwrap(),
        "a short read is complete to the head"
    );
    let (first_two, through) = b.read_partitions(0, 2, &[k]).await.unwrap();
    assert_eq!(first_two.len(), 2);
    assert_eq!(
        through, first_two[1].offset,
        "a full page is complete to its last event"
    );
    let others: Vec<u32> = (0..N).filter(|p| *p != k).collect();
    let (theirs, _) = b.read_partitions(0, 10_000, &others).await.unwrap();
    assert_eq!(
        theirs.len() + mine.len(),
        all.len() + 1,
        "only the policy is read by both"
    );

    // The count is fixed when the log is created.
    drop((a, b));
    let again = PgLog::open(db_a.clone(), PgLogOptions::default())
        .await
        .unwrap();
    assert_eq!(again.partitions(), N, "an existing log keeps its count");
    let refused = PgLog::open(db_a.clone(), partitioned(8)).await.unwrap_err();
    assert!(matches!(refused, LogError::Settings(_)), "{refused}");
    assert!(refused.to_string().contains("created with 16"), "{refused}");
    assert!(matches!(
        PgLog::open(db_a, partitioned(0)).await.unwrap_err(),
        LogError::Settings(_)
    ));
    // And a log made before partitions existed has one.
    let old = schemas.database().await;
    let log = PgLog::open(old, PgLogOptions::default()).await.unwrap();
    assert_eq!(log.partitions(), 1);
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_pg_log_passes_the_event_log_suite() {
    let Some(url) = url_or_skip("a_partitioned_pg_log_passes_the_event_log_suite") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let made = &schemas;
    run_event_log_suite(move || async move {
        let db = made.database().await;
        open(db, partitioned(64)).await as Arc<dyn EventLog>
    })
    .await;
    schemas.drop_all().await;
}
