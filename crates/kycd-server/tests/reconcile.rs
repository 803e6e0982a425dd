//! Incremental reconciliation against the simulator, on SQLite and (with
//! `KYCD_TEST_POSTGRES_URL`) on PostgreSQL: the timers' pass lists only
//! what is new since the store's cursor, a failed fetch is retried though
//! the cursor moved on, and another instance on the same store continues
//! from the cursor and the fetch throttle instead of starting over.

use std::sync::Arc;

use didit::client::{ClientConfig, CreateSessionRequest, DiditClient};
use kycd_core::clock::{FixedClock, SharedClock};
use kycd_log::postgres::testing::{url_or_skip, Schemas};
use kycd_log::store::Store;
use kycd_log::EventLog;
use kycd_server::reconcile::{Reconciler, Totals, LISTING_LOOKBACK_MS};
use kycd_sim::{Sim, SimConfig};

/// The throttle's period in these tests.
const AFTER_MS: i64 = 60_000;

struct Backend {
    store: Arc<dyn Store>,
    log: Arc<dyn EventLog>,
    _dir: Option<tempfile::TempDir>,
    _schemas: Option<Schemas>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = kycd_log::store::SqliteStore::open(&dir.path().join("store.db"), false).unwrap();
    let log =
        kycd_log::sqlite_log::SqliteLog::open(&dir.path().join("events.db"), Default::default())
            .unwrap();
    Backend {
        store: Arc::new(store),
        log: Arc::new(log),
        _dir: Some(dir),
        _schemas: None,
    }
}

async fn postgres(test: &str) -> Option<Backend> {
    let url = url_or_skip(test)?;
    let schemas = Schemas::new(&url).await;
    let db = schemas.database().await;
    let log = kycd_log::postgres::log::PgLog::open(db.clone(), Default::default())
        .await
        .unwrap();
    let store = kycd_log::postgres::store::PgStore::open(db).await.unwrap();
    Some(Backend {
        store: Arc::new(store),
        log: Arc::new(log),
        _dir: None,
        _schemas: Some(schemas),
    })
}

fn client(sim: &Sim) -> DiditClient {
    let mut c = ClientConfig::new(sim.api_key().to_owned());
    c.base_url = sim.base_url();
    // A failed read fails the fetch at once, for the retry test.
    c.max_retries = 0;
    // Didit's budgets per minute, over the simulator's shorter minute.
    c.rate_limits.window = std::time::Duration::from_millis(100);
    DiditClient::new(c).unwrap()
}

/// A reconciler (one instance) on `b`, its clock at `clock`. The overlap
/// is cut to nothing: the simulator stamps `created_at` with the wall
/// clock, so every session of a test is within the production hour.
fn reconciler(b: &Backend, sim: &Sim, clock: &FixedClock) -> Reconciler {
    let mut r = Reconciler::new(
        b.store.clone(),
        b.log.clone(),
        client(sim),
        Arc::new(clock.clone()) as SharedClock,
        AFTER_MS,
        Arc::new(Totals::default()),
    );
    r.listing_overlap_ms = 0;
    r
}

fn now_clock() -> FixedClock {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    FixedClock::at_secs(now)
}

async fn create(sim: &Sim, n: usize) -> Vec<String> {
    let c = client(sim);
    let mut ids = Vec::new();
    for _ in 0..n {
        let s = c
            .create_session(&CreateSessionRequest::new(sim.kyc_workflow_id()))
            .await
            .unwrap();
        ids.push(s.session_id.clone());
    }
    ids
}

fn listing_calls(sim: &Sim) -> usize {
    sim.calls()
        .iter()
        .filter(|c| c.path == "/v3/sessions/")
        .count()
}

fn decision_reads(sim: &Sim, id: &str) -> usize {
    sim.calls()
        .iter()
        .filter(|c| c.path.ends_with("/decision/") && c.session_id.as_deref() == Some(id))
        .count()
}

/// Returns once the wall clock (which stamps the simulator's
/// `created_at`) has moved past the current millisecond.
async fn next_millisecond() {
    let ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let start = ms();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while ms() <= start {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stood still"
        );
        tokio::task::yield_now().await;
    }
}

async fn sim() -> Sim {
    // 600 times faster: the simulator's rate-limit minute lasts 100 ms.
    kycd_sim::start(SimConfig {
        time_scale: 600.0,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

async fn the_second_pass_lists_only_what_is_new(b: Backend) {
    let sim = sim().await;
    let clock = now_clock();
    create(&sim, 250).await;
    let r = reconciler(&b, &sim, &clock);
    let first = r.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!((first.listed, first.fetched, first.errors), (250, 250, 0));
    let after_first = listing_calls(&sim);
    assert_eq!(after_first, 3, "the first pass covers the whole lookback");
    create(&sim, 2).await;
    let second = r.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!(
        listing_calls(&sim) - after_first,
        1,
        "one page holds what is new"
    );
    // The two new sessions and the previous walk's newest (the boundary),
    // with any created in the same millisecond as that one.
    assert!((3..=5).contains(&second.listed), "{second:?}");
    assert_eq!(second.fetched, 2, "{second:?}");
    sim.shutdown().await;
}

async fn a_failed_fetch_is_retried_though_the_cursor_moved_on(b: Backend) {
    let sim = sim().await;
    let clock = now_clock();
    // The failing session is the oldest, and the others are created in a
    // later millisecond: the listing's boundary (the newest session's
    // millisecond, listed again) can then never hold it.
    let failing = create(&sim, 1).await.remove(0);
    next_millisecond().await;
    create(&sim, 2).await;
    sim.fail_decision_reads(&failing, 1);
    let r = reconciler(&b, &sim, &clock);
    let first = r.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!((first.fetched, first.errors), (2, 1), "{first:?}");
    assert_eq!(decision_reads(&sim, &failing), 1);
    create(&sim, 1).await;
    // Within the throttle's period it is not asked again.
    let early = r.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!(decision_reads(&sim, &failing), 1, "{early:?}");
    clock.advance_millis(AFTER_MS);
    let later = r.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!(decision_reads(&sim, &failing), 2, "{later:?}");
    assert_eq!(later.errors, 0, "{later:?}");
    assert!(r.totals.sessions.lock().unwrap().contains(&failing));
    // The listing did not read it again: the early pass listed the
    // boundary (the first pass's newest, with any of its millisecond) and
    // the new session, the later pass the new one alone.
    assert!((2..=3).contains(&early.listed), "{early:?}");
    assert_eq!(later.listed, 1, "{later:?}");
    // Confirmed now: not fetched again a period later.
    clock.advance_millis(AFTER_MS);
    r.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!(decision_reads(&sim, &failing), 2);
    sim.shutdown().await;
}

async fn another_instance_continues_from_the_cursor_and_the_throttle(b: Backend) {
    let sim = sim().await;
    let clock = now_clock();
    create(&sim, 150).await;
    let a = reconciler(&b, &sim, &clock);
    let first = a.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!((first.listed, first.fetched), (150, 150), "{first:?}");
    let calls = listing_calls(&sim);
    let reads = sim.calls().len();
    // The timers lease moves: another instance, the same store.
    let b2 = reconciler(&b, &sim, &clock);
    let second = b2.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!(listing_calls(&sim) - calls, 1, "{second:?}");
    assert!(second.listed <= 3, "only the boundary row: {second:?}");
    assert_eq!(second.fetched, 0, "nothing asked again within the period");
    assert_eq!(sim.calls().len() - reads, 1, "one listing call, no reads");
    sim.shutdown().await;
}

async fn the_whole_lookback_is_walked_again_every_hour(b: Backend) {
    use kycd_server::reconcile::FULL_WALK_EVERY_MS;
    let sim = sim().await;
    let clock = now_clock();
    create(&sim, 150).await;
    let r = reconciler(&b, &sim, &clock);
    let first = r.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!(first.listed, 150, "{first:?}");
    let soon = r.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert!(soon.listed <= 3, "what is new only: {soon:?}");
    // An hour on, on another instance (the same store): the whole lookback
    // once, where the status of an older session changed at Didit shows.
    clock.advance_millis(FULL_WALK_EVERY_MS);
    let other = reconciler(&b, &sim, &clock);
    let full = other.incremental_pass(LISTING_LOOKBACK_MS).await;
    assert_eq!(full.listed, 150, "{full:?}");
    assert_eq!(full.errors, 0, "{full:?}");
    // And not again within the hour, on either.
    clock.advance_millis(FULL_WALK_EVERY_MS - 1);
    for r in [&r, &other] {
        let next = r.incremental_pass(LISTING_LOOKBACK_MS).await;
        assert!(next.listed <= 3, "{next:?}");
    }
    sim.shutdown().await;
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite().await).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(b) = super::postgres(stringify!($name)).await {
                        super::$name(b).await;
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    the_second_pass_lists_only_what_is_new,
    a_failed_fetch_is_retried_though_the_cursor_moved_on,
    another_instance_continues_from_the_cursor_and_the_throttle,
    the_whole_lookback_is_walked_again_every_hour,
);
