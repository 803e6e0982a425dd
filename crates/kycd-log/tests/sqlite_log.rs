//! The SQLite event log against the conformance suite, plus what only an
//! embedded backend has: files that outlive the process, group commit, a
//! full disk, schema checks.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kycd_core::EventId;
use kycd_log::sqlite_log::{Durability, SqliteLog, SqliteLogOptions};
use kycd_log::suite::{run_event_log_suite, sample_event};
use kycd_log::{Appended, EventLog, LogError, NewEvent, NewQuarantine};
use tempfile::TempDir;
use tokio::task::JoinSet;

fn options(durability: Durability) -> SqliteLogOptions {
    SqliteLogOptions {
        durability,
        ..SqliteLogOptions::default()
    }
}

fn open(path: &Path, durability: Durability) -> Arc<SqliteLog> {
    Arc::new(SqliteLog::open(path, options(durability)).unwrap())
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("events.db")
}

async fn read_all(log: &dyn EventLog) -> Vec<kycd_log::StoredEvent> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |e: &kycd_log::StoredEvent| e.offset);
        let page = log.read(after, 1000).await.unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

async fn run_suite(durability: Durability) {
    // The logs' directories must outlive the suite's checks.
    let dirs = Arc::new(Mutex::new(Vec::new()));
    run_event_log_suite(|| {
        let dir = TempDir::new().unwrap();
        let log = open(&db_path(&dir), durability);
        dirs.lock().unwrap().push(dir);
        async move { log as Arc<dyn EventLog> }
    })
    .await;
}

#[tokio::test]
async fn sqlite_log_passes_the_event_log_suite_with_full_durability() {
    run_suite(Durability::Full).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_log_passes_the_event_log_suite_with_normal_durability_on_many_threads() {
    run_suite(Durability::Normal).await;
}

#[tokio::test]
async fn reopening_after_drop_keeps_events_dedupe_keys_and_quarantine() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let log = open(&path, Durability::Full);
    let mut appended = Vec::new();
    for n in 0..10 {
        let key = format!("key-{n}");
        appended.push(log.append(sample_event(n, &[&key])).await.unwrap());
    }
    let quarantined = log
        .quarantine(NewQuarantine {
            received_at_ms: 7,
            reason: "unknown_version".into(),
            body: vec![0, 1, 2],
            meta: serde_json::json!({ "v": 9 }),
        })
        .await
        .unwrap();
    let before = read_all(&*log).await;
    drop(log);

    let log = open(&path, Durability::Full);
    assert_eq!(
        read_all(&*log).await,
        before,
        "every event survives reopening"
    );
    assert_eq!(log.head().await.unwrap(), 10);
    assert_eq!(
        *log.subscribe().borrow(),
        10,
        "the head channel starts at the stored head"
    );
    assert_eq!(
        log.append(sample_event(3, &["key-3"])).await.unwrap(),
        Appended::Duplicate {
            id: appended[3].id().clone()
        },
        "dedupe keys survive reopening"
    );
    let next = log.append(sample_event(10, &["key-10"])).await.unwrap();
    assert!(matches!(next, Appended::New { offset: 11, .. }), "{next:?}");
    assert_eq!(log.count_quarantine().await.unwrap(), 1);
    assert_eq!(
        log.list_quarantine(None, 5).await.unwrap()[0].id,
        quarantined
    );
}

#[tokio::test]
async fn the_file_can_be_reopened_right_after_shutdown() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let log = open(&path, Durability::Full);
    log.append(sample_event(1, &["a"])).await.unwrap();
    log.shutdown().await;
    assert_eq!(
        log.read(0, 10).await.unwrap().len(),
        1,
        "reads work after shutdown"
    );

    let reopened = open(&path, Durability::Full);
    let next = reopened.append(sample_event(2, &["b"])).await.unwrap();
    assert!(matches!(next, Appended::New { offset: 2, .. }), "{next:?}");
    assert_eq!(
        log.read(0, 10).await.unwrap().len(),
        2,
        "the old handle's readers see new commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed() {
    let dir = TempDir::new().unwrap();
    let log = open(&db_path(&dir), Durability::Full);
    let mut tasks = JoinSet::new();
    for n in 0..500 {
        let log = Arc::clone(&log);
        tasks.spawn(async move {
            let key = format!("k{n}");
            log.append(sample_event(n, &[&key])).await.unwrap()
        });
    }
    let mut offsets = Vec::new();
    while let Some(appended) = tasks.join_next().await {
        match appended.unwrap() {
            Appended::New { offset, .. } => offsets.push(offset),
            other => panic!("distinct keys must not dedupe: {other:?}"),
        }
    }
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (1..=500).collect::<Vec<u64>>(),
        "offsets are dense and unique"
    );

    let stats = log.stats();
    assert_eq!(stats.requests, 500);
    assert!(stats.largest_batch > 1, "appends were batched: {stats:?}");
    assert!(stats.batches < 500, "fewer commits than appends: {stats:?}");
    assert_eq!(stats.failed_batches, 0);
}

#[tokio::test]
async fn a_full_database_answers_unavailable_and_leaves_nothing_partial() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let log = Arc::new(
        SqliteLog::open(
            &path,
            SqliteLogOptions {
                max_db_bytes: Some(512 * 1024),
                ..SqliteLogOptions::default()
            },
        )
        .unwrap(),
    );

    let mut acked: HashMap<EventId, NewEvent> = HashMap::new();
    let mut refused: Vec<NewEvent> = Vec::new();
    let mut n = 0u64;
    // Concurrent waves of 16 KiB events until the cap is hit.
    for _wave in 0..100 {
        let mut tasks = JoinSet::new();
        for _ in 0..8 {
            n += 1;
            let key = format!("full-{n}");
            let event = NewEvent {
                body: vec![u8::try_from(n % 256).unwrap(); 16 * 1024],
                ..sample_event(n, &[&key])
            };
            let log = Arc::clone(&log);
            tasks.spawn(async move { (log.append(event.clone()).await, event) });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                (Ok(Appended::New { id, .. }), event) => {
                    acked.insert(id, event);
                }
                (Err(LogError::Unavailable(_)), event) => refused.push(event),
                (other, _) => panic!("unexpected append result {other:?}"),
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(!refused.is_empty(), "the cap was reached");
    assert!(log.stats().failed_batches >= 1);

    // Exactly the acknowledged events are stored, each once, intact.
    let stored = read_all(&*log).await;
    assert_eq!(
        stored.len(),
        acked.len(),
        "nothing from a failed batch is visible"
    );
    for event in &stored {
        assert!(event.matches(&acked[&event.id]));
    }
    let offsets: Vec<u64> = stored.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, (1..=stored.len() as u64).collect::<Vec<_>>());
    assert_eq!(log.head().await.unwrap(), stored.len() as u64);
    drop(log);

    // Without the cap, refused events are new (their dedupe keys were not
    // recorded) and acknowledged ones are duplicates.
    let log = open(&path, Durability::Full);
    for event in refused {
        let appended = log.append(event).await.unwrap();
        assert!(
            appended.is_new(),
            "a refused event left a dedupe key behind"
        );
    }
    for (id, event) in acked {
        assert_eq!(log.append(event).await.unwrap(), Appended::Duplicate { id });
    }
}

#[tokio::test]
async fn one_failing_event_fails_its_whole_batch() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let log = open(&path, Durability::Full);
    log.append(sample_event(0, &["before"])).await.unwrap();

    // Another connection makes inserts of kind "poison" fail, and holds the
    // write lock so that the appends below queue up behind it.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker
        .execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.kind = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        )
        .unwrap();

    // On this single-threaded runtime a task runs from its "sent" signal
    // through the append's enqueue without yielding, so once every signal
    // has arrived, every append is in the writer's queue, the poisoned one
    // last.
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for n in 1..=21u64 {
        let log = Arc::clone(&log);
        let sent = sent_tx.clone();
        let key = format!("batch-{n}");
        let mut event = sample_event(n, &[&key]);
        if n == 21 {
            event.kind = "poison".into();
        }
        tasks.spawn(async move {
            sent.send(()).unwrap();
            (log.append(event.clone()).await, event)
        });
    }
    for _ in 0..21 {
        tokio::time::timeout(Duration::from_secs(10), sent_rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    blocker.execute_batch("COMMIT").unwrap();

    let mut acked = HashSet::new();
    let mut refused = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (Ok(Appended::New { id, .. }), _) => {
                acked.insert(id);
            }
            (Err(LogError::Unavailable(_)), event) => refused.push(event),
            (other, _) => panic!("unexpected append result {other:?}"),
        }
    }
    assert!(refused.iter().any(|e| e.kind == "poison"));
    assert!(
        refused.len() > 1,
        "the poisoned event's batch-mates were refused with it"
    );
    assert_eq!(log.stats().failed_batches, 1);
    let stored = read_all(&*log).await;
    assert_eq!(
        stored.len(),
        1 + acked.len(),
        "nothing from the failed batch is visible"
    );

    // The writer carries on, and refused events left no keys behind.
    blocker.execute_batch("DROP TRIGGER poison").unwrap();
    for event in refused {
        assert!(log.append(event).await.unwrap().is_new());
    }
}

/// A small deterministic generator, so a failure replays identically.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_reopen_cycles_exactly_once() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    // Every acknowledged New, by id.
    let mut accepted: HashMap<EventId, NewEvent> = HashMap::new();
    let mut n = 0u64;

    for cycle in 0..6 {
        let durability = if cycle % 2 == 0 {
            Durability::Full
        } else {
            Durability::Normal
        };
        let log = Arc::new(
            SqliteLog::open(
                &path,
                SqliteLogOptions {
                    durability,
                    // Small batches in some cycles, so batch boundaries vary.
                    max_batch: [512, 3, 64][cycle % 3],
                    ..SqliteLogOptions::default()
                },
            )
            .unwrap(),
        );
        let mut tasks = JoinSet::new();
        for _ in 0..150 {
            n += 1;
            // Keys from a pool of 200, zero to three per event, so events
            // collide within a cycle and across cycles.
            let keys: Vec<String> = (0..rng.below(4))
                .map(|_| format!("pool-{}", rng.below(200)))
                .collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let event = NewEvent {
                body: (0..rng.below(2000)).map(|_| rng.next() as u8).collect(),
                ..sample_event(n, &keys)
            };
            let log = Arc::clone(&log);
            tasks.spawn(async move { (log.append(event.clone()).await.unwrap(), event) });
        }
        let mut duplicates = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                (Appended::New { id, .. }, event) => {
                    assert!(accepted.insert(id, event).is_none(), "ids are unique");
                }
                (Appended::Duplicate { id }, event) => duplicates.push((id, event)),
            }
        }
        // A duplicate points at an accepted event that shares a key with it.
        for (id, event) in duplicates {
            let original = accepted
                .get(&id)
                .unwrap_or_else(|| panic!("duplicate points at unknown {id}"));
            assert!(
                event
                    .dedupe_keys
                    .iter()
                    .any(|k| original.dedupe_keys.contains(k)),
                "duplicate shares no key with {id}"
            );
        }
        // End the cycle by shutdown or by just dropping the handle.
        if cycle % 2 == 1 {
            log.shutdown().await;
        }
        drop(log);

        let log = open(&path, Durability::Full);
        let stored = read_all(&*log).await;
        assert_eq!(
            stored.len(),
            accepted.len(),
            "cycle {cycle}: each acknowledged event once"
        );
        let offsets: Vec<u64> = stored.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, (1..=stored.len() as u64).collect::<Vec<_>>());
        let mut keys_seen = HashSet::new();
        for event in &stored {
            assert!(
                event.matches(&accepted[&event.id]),
                "cycle {cycle}: fields intact"
            );
            for key in event.dedupe_keys.iter().collect::<HashSet<_>>() {
                assert!(
                    keys_seen.insert(key.clone()),
                    "two stored events share key {key}"
                );
            }
        }
    }
}

#[test]
fn a_database_from_a_newer_build_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    drop(SqliteLog::open(&path, SqliteLogOptions::default()).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteLog::open(&path, SqliteLogOptions::default()).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt(m) if m.contains("schema version 99")),
        "{err}"
    );
}

#[test]
fn another_sqlite_database_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "application_id", 1234).unwrap();
    drop(conn);
    let err = SqliteLog::open(&path, SqliteLogOptions::default()).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt(m) if m.contains("not a kycd event log")),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_database_is_corrupt() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    std::fs::write(&path, vec![0x42; 8192]).unwrap();
    let err = SqliteLog::open(&path, SqliteLogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt(_)), "{err}");
}

#[test]
fn a_missing_directory_is_unavailable() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("missing").join("events.db");
    let err = SqliteLog::open(&path, SqliteLogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Unavailable(_)), "{err}");
}

/// Not a pass/fail test: prints durable appends per second with many
/// concurrent appenders. `cargo test -p kycd-log --test sqlite_log -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn append_throughput() {
    for (durability, appenders) in [
        (Durability::Full, 64u64),
        (Durability::Full, 1_000),
        (Durability::Normal, 1_000),
    ] {
        let dir = TempDir::new().unwrap();
        let log = open(&db_path(&dir), durability);
        let total = 50_000u64;
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for a in 0..appenders {
            let log = Arc::clone(&log);
            tasks.spawn(async move {
                let mut n = a;
                while n < total {
                    let key = format!("didit-{n}");
                    let body_hash = format!("sha256-{n}");
                    let event = NewEvent {
                        body: vec![b'x'; 1024],
                        ..sample_event(n, &[&key, &body_hash])
                    };
                    log.append(event).await.unwrap();
                    n += appenders;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = started.elapsed();
        let stats = log.stats();
        println!(
            "{durability:?}, {appenders} appenders: {total} appends in {elapsed:?} = {:.0}/s; {} batches, mean {:.1}, largest {}",
            total as f64 / elapsed.as_secs_f64(),
            stats.batches,
            stats.requests as f64 / stats.batches as f64,
            stats.largest_batch
        );
    }
}
