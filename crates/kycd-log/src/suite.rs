//! The conformance suite every [`EventLog`] backend must pass.
//!
//! A backend's tests call [`run_event_log_suite`] with a function that makes
//! a fresh, empty log; each check gets its own log, so checks cannot see each
//! other's events. The checks are also public one by one, for a backend that
//! wants to run them as separate tests.
//!
//! ```ignore
//! #[tokio::test]
//! async fn sqlite_log_passes_the_suite() {
//!     run_event_log_suite(|| async { Arc::new(make_log()) as Arc<dyn EventLog> }).await;
//! }
//! ```
//!
//! Checks panic with a message naming what differed; they never sleep to
//! wait for work, and each runs under a deadline so a hung backend fails
//! instead of hanging the test run.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kycd_core::EventId;
use serde_json::json;
use tokio::task::JoinSet;

use crate::log::{
    Appended, EventLog, EventSource, LogError, NewEvent, NewQuarantine, QUARANTINE_ID_PREFIX,
};

/// How long one check may take before it counts as hung.
const CHECK_DEADLINE: Duration = Duration::from_secs(60);

/// Run each named check of a suite, in order, each against a fresh backend
/// from `make` and through [`run_check`]: every suite's runner is this one
/// list of check functions.
macro_rules! run_checks {
    ($suite:expr, $make:ident, [$($check:ident),* $(,)?]) => {
        $(
            $crate::suite::run_check($suite, stringify!($check), || async {
                $check($make().await).await
            })
            .await;
        )*
    };
}
pub(crate) use run_checks;

/// Run every check, each against a fresh log from `make`.
pub async fn run_event_log_suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    run_checks!(
        "event log",
        make,
        [
            append_then_read_gives_back_identical_events,
            offsets_start_at_one_and_strictly_increase,
            read_paginates_by_offset,
            any_shared_dedupe_key_makes_a_duplicate,
            concurrent_duplicates_resolve_to_one_winner,
            get_finds_events_by_id,
            head_and_subscribe_follow_commits,
            quarantine_round_trips_newest_first,
            a_probe_write_succeeds_and_changes_nothing_read,
            shutdown_finishes_in_flight_writes_then_refuses,
        ]
    );
}

/// Run one check of `suite` under [`CHECK_DEADLINE`], naming it first so
/// that a panic in the output below is attributable; the store-side suites
/// run their checks through this too.
pub(crate) async fn run_check<C, Fut>(suite: &str, name: &str, check: C)
where
    C: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    eprintln!("{suite} suite: {name}");
    if tokio::time::timeout(CHECK_DEADLINE, check()).await.is_err() {
        panic!("{suite} suite: {name} did not finish within {CHECK_DEADLINE:?}");
    }
}

/// A plausible webhook event numbered `n`, with `keys` as dedupe keys.
pub fn sample_event(n: u64, keys: &[&str]) -> NewEvent {
    let n_i64 = i64::try_from(n).unwrap_or(i64::MAX);
    NewEvent {
        received_at_ms: 1_774_970_000_000 + n_i64,
        source: EventSource::Webhook,
        kind: "status.updated".into(),
        session_id: Some(format!("sess-{n}")),
        didit_event_id: Some(format!("didit-{n}")),
        dedupe_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        body: format!(r#"{{"session_id":"sess-{n}","status":"Approved"}}"#).into_bytes(),
        meta: json!({ "signature": "v2", "n": n }),
    }
}

fn ok<T>(result: Result<T, LogError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn new_offset(appended: &Appended, what: &str) -> u64 {
    match appended {
        Appended::New { offset, .. } => *offset,
        Appended::Duplicate { id } => {
            panic!("{what}: expected a new event, got a duplicate of {id}")
        }
    }
}

/// Everything in the log, read in pages.
async fn read_all(log: &dyn EventLog) -> Vec<crate::log::StoredEvent> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = ok(log.read(after, 100).await, "read");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.offset;
        all.extend(page);
    }
}

pub async fn append_then_read_gives_back_identical_events(log: Arc<dyn EventLog>) {
    let mut invalid_utf8 = vec![0u8, 0xff, 0xfe, b'{', 0, 0x80];
    invalid_utf8.extend((0..=255u8).rev());
    let events = vec![
        sample_event(1, &["k1"]),
        NewEvent {
            received_at_ms: -5,
            source: EventSource::Polled,
            kind: "données.vérifiées ✓".into(),
            session_id: None,
            didit_event_id: None,
            dedupe_keys: vec![],
            body: invalid_utf8,
            meta: json!({
                "nested": { "list": [1, 2.5, -0.125, 1e300, null, true], "s": "\u{0}\"q\"" },
                "big": u64::MAX,
            }),
        },
        NewEvent {
            source: EventSource::Subject,
            body: Vec::new(),
            meta: serde_json::Value::Null,
            ..sample_event(3, &["k3a", "k3b", "k3c"])
        },
        NewEvent {
            // Large enough to span many database pages or records.
            body: (0..1_048_576u32).map(|i| (i % 251) as u8).collect(),
            ..sample_event(4, &["k4"])
        },
    ];
    let mut appended = Vec::new();
    for event in &events {
        appended.push(ok(log.append(event.clone()).await, "append"));
    }
    let stored = read_all(&*log).await;
    assert_eq!(
        stored.len(),
        events.len(),
        "every appended event is read back"
    );
    for ((event, appended), stored) in events.iter().zip(&appended).zip(&stored) {
        let Appended::New { offset, id } = appended else {
            panic!("distinct keys must not dedupe: {appended:?}");
        };
        assert_eq!(stored.offset, *offset, "read offset matches the append's");
        assert_eq!(&stored.id, id, "read id matches the append's");
        assert_eq!(stored.body, event.body, "body bytes are returned unchanged");
        assert!(
            stored.matches(event),
            "fields differ: {stored:?} vs {event:?}"
        );
    }
}

pub async fn offsets_start_at_one_and_strictly_increase(log: Arc<dyn EventLog>) {
    assert_eq!(ok(log.head().await, "head"), 0, "a fresh log is empty");
    assert!(ok(log.read(0, 10).await, "read").is_empty());
    let mut offsets = Vec::new();
    for n in 0..20 {
        let key = format!("offsets-{n}");
        let appended = ok(log.append(sample_event(n, &[&key])).await, "append");
        offsets.push(new_offset(&appended, "append"));
    }
    assert_eq!(offsets[0], 1, "the first offset is 1");
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets strictly increase: {offsets:?}"
    );
    assert_eq!(ok(log.head().await, "head"), offsets[19]);
    let read: Vec<u64> = read_all(&*log).await.iter().map(|e| e.offset).collect();
    assert_eq!(
        read, offsets,
        "read returns exactly the appended offsets, ascending"
    );
}

pub async fn read_paginates_by_offset(log: Arc<dyn EventLog>) {
    for n in 0..10 {
        ok(log.append(sample_event(n, &[])).await, "append");
    }
    let all = ok(log.read(0, 100).await, "read");
    assert_eq!(all.len(), 10);

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = ok(log.read(after, 3).await, "read page");
        assert!(page.len() <= 3, "a page holds at most max events");
        assert!(
            page.iter().all(|e| e.offset > after),
            "a page starts after the given offset"
        );
        let Some(last) = page.last() else { break };
        after = last.offset;
        paged.extend(page);
    }
    assert_eq!(paged, all, "pages concatenate to the whole log");

    let from_middle = ok(log.read(all[4].offset, 100).await, "read from middle");
    assert_eq!(from_middle, all[5..].to_vec());
    let head = ok(log.head().await, "head");
    assert!(ok(log.read(head, 10).await, "read at head").is_empty());
    assert!(ok(log.read(u64::MAX, 10).await, "read past the end").is_empty());
    assert!(ok(log.read(0, 0).await, "read zero").is_empty());
}

pub async fn any_shared_dedupe_key_makes_a_duplicate(log: Arc<dyn EventLog>) {
    let first = ok(log.append(sample_event(1, &["k1", "k2"])).await, "append");
    let original = first.id().clone();
    new_offset(&first, "first append");

    for (n, keys, what) in [
        (2, ["k1", "other-2"], "shares the first key"),
        (3, ["other-3", "k2"], "shares the second key"),
        (4, ["k2", "k1"], "shares both keys"),
    ] {
        let appended = ok(log.append(sample_event(n, &keys)).await, "append");
        assert_eq!(
            appended,
            Appended::Duplicate {
                id: original.clone()
            },
            "an event that {what} is a duplicate of the original"
        );
    }
    // A duplicate's other keys are not recorded: only accepted events count.
    let fresh = ok(log.append(sample_event(5, &["other-2"])).await, "append");
    assert!(
        fresh.is_new(),
        "keys of a duplicate are not recorded: {fresh:?}"
    );

    // No keys: never a duplicate, even with identical content.
    let a = ok(log.append(sample_event(6, &[])).await, "append");
    let b = ok(log.append(sample_event(6, &[])).await, "append");
    assert!(a.is_new() && b.is_new(), "events without keys never dedupe");

    // A key listed twice in one event does not make it a duplicate of itself.
    let twice = ok(log.append(sample_event(7, &["z", "z"])).await, "append");
    assert!(twice.is_new(), "a repeated key within one event: {twice:?}");
    let again = ok(log.append(sample_event(8, &["z"])).await, "append");
    assert_eq!(
        again,
        Appended::Duplicate {
            id: twice.id().clone()
        }
    );

    let stored = read_all(&*log).await;
    assert_eq!(stored.len(), 5, "duplicates are not stored");
    assert_eq!(ok(log.head().await, "head"), stored[4].offset);
}

pub async fn concurrent_duplicates_resolve_to_one_winner(log: Arc<dyn EventLog>) {
    const GROUPS: u64 = 40;
    const PER_GROUP: u64 = 5;
    let mut tasks = JoinSet::new();
    for n in 0..GROUPS * PER_GROUP {
        let group = n % GROUPS;
        let log = Arc::clone(&log);
        tasks.spawn(async move {
            let shared = format!("group-{group}");
            let own = format!("own-{n}");
            // Alternate the shared key's position, so both "first key" and
            // "second key" matches race.
            let keys = if n % 2 == 0 {
                [&shared, &own]
            } else {
                [&own, &shared]
            };
            let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
            let result = log.append(sample_event(n, &keys)).await;
            (group, ok(result, "concurrent append"))
        });
    }
    let mut winners: HashMap<u64, EventId> = HashMap::new();
    let mut duplicates: Vec<(u64, EventId)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (group, appended) = match joined {
            Ok(value) => value,
            Err(e) => panic!("append task failed: {e}"),
        };
        match appended {
            Appended::New { id, .. } => {
                if let Some(previous) = winners.insert(group, id.clone()) {
                    panic!("group {group} has two new events: {previous} and {id}");
                }
            }
            Appended::Duplicate { id } => duplicates.push((group, id)),
        }
    }
    assert_eq!(
        winners.len() as u64,
        GROUPS,
        "exactly one new event per key group"
    );
    assert_eq!(duplicates.len() as u64, GROUPS * (PER_GROUP - 1));
    for (group, id) in &duplicates {
        assert_eq!(
            Some(id),
            winners.get(group),
            "a duplicate in group {group} points at the group's winner"
        );
    }
    let stored = read_all(&*log).await;
    assert_eq!(stored.len() as u64, GROUPS, "only winners are stored");
    let stored_ids: HashSet<&EventId> = stored.iter().map(|e| &e.id).collect();
    assert!(winners.values().all(|id| stored_ids.contains(id)));
}

pub async fn get_finds_events_by_id(log: Arc<dyn EventLog>) {
    let mut ids = Vec::new();
    for n in 0..5 {
        let event = sample_event(n, &[]);
        let appended = ok(log.append(event.clone()).await, "append");
        ids.push((appended, event));
    }
    for (appended, event) in &ids {
        let stored = ok(log.get(appended.id()).await, "get");
        let Some(stored) = stored else {
            panic!("committed event {} not found by id", appended.id());
        };
        assert_eq!(stored.offset, new_offset(appended, "append"));
        assert!(stored.matches(event));
    }
    let unknown = EventId::new(1_774_970_000_000);
    assert_eq!(ok(log.get(&unknown).await, "get unknown"), None);
}

pub async fn head_and_subscribe_follow_commits(log: Arc<dyn EventLog>) {
    let mut head_rx = log.subscribe();
    assert_eq!(*head_rx.borrow_and_update(), 0, "a fresh log's head is 0");

    // A consumer parked on the channel wakes when a commit lands.
    let waiter = tokio::spawn(async move {
        match head_rx.wait_for(|head| *head >= 1).await {
            Ok(head) => *head,
            Err(e) => panic!("head channel closed: {e}"),
        }
    });
    let appended = ok(log.append(sample_event(1, &["h1"])).await, "append");
    let offset = new_offset(&appended, "append");
    let woken_at = match waiter.await {
        Ok(head) => head,
        Err(e) => panic!("subscriber task failed: {e}"),
    };
    assert!(woken_at >= 1);
    assert_eq!(ok(log.head().await, "head"), offset);

    // A duplicate and a quarantine do not move the head.
    ok(
        log.append(sample_event(2, &["h1"])).await,
        "append duplicate",
    );
    ok(log.quarantine(sample_quarantine(1)).await, "quarantine");
    assert_eq!(ok(log.head().await, "head"), offset);

    let mut later = log.subscribe();
    let second = new_offset(
        &ok(log.append(sample_event(3, &[])).await, "append"),
        "append",
    );
    let seen = match later.wait_for(|head| *head >= second).await {
        Ok(head) => *head,
        Err(e) => panic!("head channel closed: {e}"),
    };
    assert_eq!(seen, second);
    assert_eq!(ok(log.head().await, "head"), second);
}

fn sample_quarantine(n: u64) -> NewQuarantine {
    NewQuarantine {
        received_at_ms: 1_774_970_000_000 + i64::try_from(n).unwrap_or(0),
        reason: format!("unknown_payload_version_{n}"),
        body: vec![0xff, 0, u8::try_from(n % 256).unwrap_or(0), b'}'],
        meta: json!({ "n": n, "headers": { "x-signature-v2": "..." } }),
    }
}

pub async fn quarantine_round_trips_newest_first(log: Arc<dyn EventLog>) {
    assert_eq!(ok(log.count_quarantine().await, "count"), 0);
    assert!(ok(log.list_quarantine(None, 10).await, "list").is_empty());

    let mut ids = Vec::new();
    for n in 0..5 {
        let id = ok(log.quarantine(sample_quarantine(n)).await, "quarantine");
        assert!(id.starts_with(QUARANTINE_ID_PREFIX), "quarantine id {id}");
        ids.push(id);
    }
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        5,
        "ids are unique"
    );
    assert_eq!(ok(log.count_quarantine().await, "count"), 5);

    let listed = ok(log.list_quarantine(None, 10).await, "list");
    let listed_ids: Vec<&String> = listed.iter().map(|q| &q.id).collect();
    let newest_first: Vec<&String> = ids.iter().rev().collect();
    assert_eq!(listed_ids, newest_first, "listed newest first");
    for (q, n) in listed.iter().zip((0..5).rev()) {
        let expected = sample_quarantine(n);
        assert_eq!(q.received_at_ms, expected.received_at_ms);
        assert_eq!(q.reason, expected.reason);
        assert_eq!(
            q.body, expected.body,
            "quarantined bytes are returned unchanged"
        );
        assert_eq!(q.meta, expected.meta);
    }

    // Paging with before_id walks the same order without overlap.
    let mut paged = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = ok(log.list_quarantine(before.as_deref(), 2).await, "list page");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        paged.extend(page);
    }
    assert_eq!(paged, listed);
    let unknown = format!("{QUARANTINE_ID_PREFIX}00000000000000000000000000");
    assert!(ok(log.list_quarantine(Some(&unknown), 10).await, "list").is_empty());
    assert!(ok(log.list_quarantine(None, 0).await, "list zero").is_empty());
    assert_eq!(
        ok(log.head().await, "head"),
        0,
        "quarantine is not in the event log"
    );
}

/// [`EventLog::probe_write`] commits on a writable log, interleaves with
/// appends, and leaves the events, the head and the quarantine as they
/// were; once the log is shut down it is refused like an append.
pub async fn a_probe_write_succeeds_and_changes_nothing_read(log: Arc<dyn EventLog>) {
    log.probe_write()
        .await
        .expect("a probe write on a writable log");
    log.append(sample_event(1, &[])).await.expect("append");
    let (probed, appended) = tokio::join!(log.probe_write(), log.append(sample_event(2, &[])));
    probed.expect("a probe beside an append");
    appended.expect("an append beside a probe");
    log.probe_write().await.expect("a probe after appends");
    assert_eq!(log.head().await.expect("head"), 2);
    assert_eq!(read_all(&*log).await.len(), 2);
    assert_eq!(log.count_quarantine().await.expect("count"), 0);
    log.shutdown().await;
    assert_eq!(log.probe_write().await, Err(LogError::Closed));
}

pub async fn shutdown_finishes_in_flight_writes_then_refuses(log: Arc<dyn EventLog>) {
    let mut tasks = JoinSet::new();
    for n in 0..50 {
        let log = Arc::clone(&log);
        tasks.spawn(async move { log.append(sample_event(n, &[])).await });
    }
    // Let some appends reach the log before shutting down, without waiting
    // for all of them: the rest race with shutdown.
    tokio::task::yield_now().await;
    log.shutdown().await;

    let mut accepted = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(appended)) => accepted.push(appended),
            Ok(Err(LogError::Closed)) => {}
            Ok(Err(e)) => panic!("an append racing shutdown gets a result or Closed, got {e}"),
            Err(e) => panic!("append task failed: {e}"),
        }
    }
    // Whatever was acknowledged is committed, and reads still work.
    let stored = read_all(&*log).await;
    assert_eq!(
        stored.len(),
        accepted.len(),
        "acknowledged appends are committed"
    );
    for appended in &accepted {
        assert!(stored.iter().any(|e| &e.id == appended.id()));
    }

    assert_eq!(
        log.append(sample_event(99, &[])).await,
        Err(LogError::Closed)
    );
    assert_eq!(
        log.quarantine(sample_quarantine(99)).await,
        Err(LogError::Closed)
    );
    // Idempotent.
    log.shutdown().await;
    assert_eq!(
        log.append(sample_event(100, &[])).await,
        Err(LogError::Closed)
    );
}
