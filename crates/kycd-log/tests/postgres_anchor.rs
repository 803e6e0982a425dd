//! Anchoring the audit chain's head on PostgreSQL, where several
//! instances append to one chain: the head anchored is read from the
//! database (not from one instance's commits), only by the instance
//! holding the lease, only when it moved, and only over records that
//! verify from the newest anchor, so that deleting the newest records
//! (and moving the head row with them) shows at the next check instead of
//! being vouched for. A schema per test; without `KYCD_TEST_POSTGRES_URL`
//! these print a notice and pass, except under `CI=true`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kycd_log::anchor::{check_at_start, AnchoredChain, Anchoring, AuditOptions};
use kycd_log::audit::{Audit, AuditKey, Head, NewAudit, Problem, STARTED_OVER_BROKEN};
use kycd_log::postgres::anchor::{attach, PgChain};
use kycd_log::postgres::log::PgLog;
use kycd_log::postgres::store::PgStore;
use kycd_log::postgres::testing::{url_or_skip, Schemas};
use kycd_log::postgres::{Database, PoolSettings};
use kycd_log::EventLog;
use serde_json::json;
use tokio::sync::watch;

/// A test's schema (its URL) and the directory of the audit key every
/// instance shares; `None` without a server to test on.
async fn setup() -> Option<(Schemas, String, tempfile::TempDir)> {
    let url = url_or_skip("anchoring on PostgreSQL")?;
    let schemas = Schemas::new(&url).await;
    let url = schemas.url_of(&schemas.schema().await);
    Some((schemas, url, tempfile::tempdir().unwrap()))
}

/// One instance: its pool, store, log and the anchoring task `attach`
/// made for it (the key in `dir`, shared by every instance).
struct Instance {
    db: Database,
    store: PgStore,
    log: Arc<PgLog>,
}

impl Instance {
    async fn open(url: &str) -> Self {
        let db = Database::connect(url, &PoolSettings::default())
            .await
            .unwrap();
        let store = PgStore::open(db.clone()).await.unwrap();
        let log = Arc::new(PgLog::open(db.clone(), Default::default()).await.unwrap());
        Self { db, store, log }
    }

    async fn attach(&self, dir: &std::path::Path, allow_broken: bool) -> Anchoring {
        let options = AuditOptions {
            allow_broken,
            ..AuditOptions::default()
        };
        attach(&self.store, dir, &options, 900).await.unwrap()
    }

    async fn append(&self, from: u64, n: u64) {
        for i in from..from + n {
            self.store
                .audit(vec![NewAudit {
                    at_ms: 1_000 + i as i64,
                    actor: "kycd:policy".into(),
                    action: "decision".into(),
                    target: Some(format!("session-{i}")),
                    details: json!({"decision_id": format!("dec_{i}")}),
                }])
                .await
                .unwrap();
        }
    }

    /// Ten records, anchored by this instance's task (returned).
    async fn anchored_ten(&self, dir: &std::path::Path) -> (Anchoring, Head) {
        let mut anchoring = self.attach(dir, false).await;
        self.append(0, 10).await;
        let anchored = anchoring.pass(&*self.log, 1).await.unwrap().unwrap();
        assert_eq!(anchored.seq, 10);
        (anchoring, anchored)
    }

    fn chain(&self) -> PgChain {
        PgChain::new(self.db.clone())
    }

    /// The newest anchor's head.
    async fn anchored(&self) -> Option<Head> {
        self.chain().newest_anchor().await.unwrap().map(|a| a.head)
    }

    async fn head(&self) -> Head {
        self.chain().head().await.unwrap().expect("a head")
    }

    /// Delete the records after `keep` and move the head row back to it,
    /// as someone who can edit the tables would to hide them.
    async fn truncate_to(&self, keep: u64) {
        let keep = keep as i64;
        sqlx::query("DELETE FROM audit WHERE seq > $1")
            .bind(keep)
            .execute(self.db.pool())
            .await
            .unwrap();
        sqlx::query(
            "UPDATE audit_head SET seq = a.seq, hash = a.hash, alg = a.alg
             FROM audit a WHERE a.seq = $1 AND audit_head.id = 1",
        )
        .bind(keep)
        .execute(self.db.pool())
        .await
        .unwrap();
    }

    async fn key(&self, dir: &std::path::Path) -> AuditKey {
        AuditKey::load(&dir.join("audit.key")).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_read_from_the_database_is_anchored_once_each_time_it_moves() {
    let Some((schemas, url, dir)) = setup().await else {
        return;
    };
    let (a, b) = (Instance::open(&url).await, Instance::open(&url).await);
    let mut anchoring = a.attach(dir.path(), false).await;
    let _ = b.attach(dir.path(), false).await;

    assert_eq!(
        anchoring.pass(&*a.log, 1).await.unwrap(),
        None,
        "an empty chain has no head"
    );
    a.append(0, 3).await;
    let first = anchoring.pass(&*a.log, 2).await.unwrap();
    assert_eq!(first.as_ref().map(|h| h.seq), Some(3));
    assert_eq!(a.anchored().await, first);
    assert_eq!(
        anchoring.pass(&*a.log, 3).await.unwrap(),
        None,
        "a head that did not move is not anchored again"
    );
    assert_eq!(a.chain().anchors().await.unwrap().len(), 1);

    // Another instance's records move the head too.
    b.append(3, 2).await;
    let second = anchoring.pass(&*a.log, 4).await.unwrap();
    assert_eq!(second, Some(b.head().await));
    assert_eq!(second.map(|h| h.seq), Some(5));
    assert_eq!(a.chain().anchors().await.unwrap().len(), 2);
    let (v, _) = check_at_start(&a.chain(), Some(&a.key(dir.path()).await), None)
        .await
        .unwrap();
    assert_eq!(v.problem, None);
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_while_the_lease_is_held_does_the_task_anchor_and_a_stop_anchors_once_more() {
    let Some((schemas, url, dir)) = setup().await else {
        return;
    };
    let a = Instance::open(&url).await;
    let log: Arc<dyn EventLog> = a.log.clone();

    // Never held: nothing is anchored, not even as it stops.
    let (_hold, held) = watch::channel(false);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(a.attach(dir.path(), false).await.while_holding(held).run(
        log.clone(),
        || 5,
        stopped,
    ));
    a.append(0, 2).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        a.anchored().await,
        None,
        "an instance without the lease anchors nothing"
    );

    // Held: the head is anchored, and once more as the task stops.
    let (hold, held) = watch::channel(false);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(a.attach(dir.path(), false).await.while_holding(held).run(
        log,
        || 6,
        stopped,
    ));
    hold.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.anchored().await.map(|h| h.seq) != Some(2) {
        assert!(Instant::now() < deadline, "the holder never anchored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.append(2, 3).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(a.anchored().await.map(|h| h.seq), Some(5));
    assert_eq!(a.chain().anchors().await.unwrap().len(), 2);
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_cut_short_or_rewritten_behind_the_anchor_is_never_anchored_and_stops_the_start() {
    let Some((schemas, url, dir)) = setup().await else {
        return;
    };
    let a = Instance::open(&url).await;
    let (mut anchoring, anchored) = a.anchored_ten(dir.path()).await;
    let offset = a.chain().newest_anchor().await.unwrap().unwrap().offset;
    let key = a.key(dir.path()).await;

    // The newest records deleted and the head row moved back: the chain
    // alone is a valid, shorter chain. Its anchor is not.
    a.truncate_to(7).await;
    let (v, _) = check_at_start(&a.chain(), Some(&key), None).await.unwrap();
    assert_eq!(
        v.problem,
        Some(Problem::Truncated {
            anchored: 10,
            last: 7,
            source: format!("the event log (offset {offset})"),
        })
    );
    assert_eq!(
        anchoring.pass(&*a.log, 2).await.unwrap(),
        None,
        "the truncated head is not anchored"
    );
    assert_eq!(a.anchored().await, Some(anchored.clone()));

    // Appends go on from the moved head row, past the anchored record.
    let b = Instance::open(&url).await;
    b.store.set_audit_key(key.clone());
    b.append(100, 5).await;
    let (v, _) = check_at_start(&a.chain(), Some(&key), None).await.unwrap();
    assert!(
        matches!(v.problem, Some(Problem::Rewritten { seq: 10, .. })),
        "{:?}",
        v.problem
    );
    assert_eq!(anchoring.pass(&*a.log, 3).await.unwrap(), None);
    assert_eq!(a.anchored().await, Some(anchored));

    // A start over it refuses, naming what it found.
    let c = Instance::open(&url).await;
    let refused = attach(&c.store, dir.path(), &AuditOptions::default(), 900).await;
    let said = refused
        .err()
        .expect("a broken chain stops the start")
        .to_string();
    assert!(
        said.contains("the audit chain is broken: record 10 does not carry the MAC")
            && said.contains("--allow-broken-audit"),
        "{said}"
    );
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_the_operator_allowed_over_a_broken_chain_is_anchored_at_once() {
    let Some((schemas, url, dir)) = setup().await else {
        return;
    };
    let a = Instance::open(&url).await;
    a.anchored_ten(dir.path()).await;
    a.truncate_to(7).await;

    // Allowed, the start records what it found and anchors that record
    // even without the lease, so every instance checks from there on.
    let b = Instance::open(&url).await;
    let allowed = b.attach(dir.path(), true).await;
    assert!(b.store.audit_chain_broken());
    let records = b.store.list_audit(i64::MIN, 7, 10).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].action, STARTED_OVER_BROKEN);
    let (_stop, stopped) = watch::channel(true);
    let log: Arc<dyn EventLog> = b.log.clone();
    allowed.run(log, || 2, stopped).await;
    assert_eq!(b.anchored().await.map(|h| h.seq), Some(8));

    // The next start needs no flag.
    let c = Instance::open(&url).await;
    attach(&c.store, dir.path(), &AuditOptions::default(), 900)
        .await
        .expect("one accepted start is enough");
    schemas.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_writes_the_anchor_file_and_the_start_checks_it() {
    let Some((schemas, url, dir)) = setup().await else {
        return;
    };
    let file = dir.path().join("head.json");
    let a = Instance::open(&url).await;
    let options = AuditOptions {
        anchor_file: Some(file.clone()),
        ..AuditOptions::default()
    };
    let mut anchoring = attach(&a.store, dir.path(), &options, 900).await.unwrap();
    a.append(0, 4).await;
    let anchored = anchoring.pass(&*a.log, 1).await.unwrap();
    assert_eq!(kycd_log::anchor::read_anchor_file(&file).unwrap(), anchored);

    // A head the log never saw (its newest anchors lost with the records
    // after them): the file alone shows the truncation.
    let beyond = Head {
        seq: 9,
        mac: anchored.unwrap().mac,
    };
    kycd_log::anchor::write_anchor_file(&file, &beyond).unwrap();
    let (v, _) = check_at_start(&a.chain(), Some(&a.key(dir.path()).await), Some(&file))
        .await
        .unwrap();
    assert_eq!(
        v.problem,
        Some(Problem::Truncated {
            anchored: 9,
            last: 4,
            source: format!("the anchor file {}", file.display()),
        })
    );
    let refused = attach(&a.store, dir.path(), &options, 900).await;
    assert!(matches!(
        refused,
        Err(kycd_log::anchor::AnchorError::Broken(_))
    ));
    schemas.drop_all().await;
}
