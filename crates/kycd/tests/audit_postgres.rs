//! The audit tamper test on PostgreSQL (`KYCD_DATABASE_URL`, a schema per
//! test): a chain of records keyed and anchored by the server's own code,
//! then tampered with the way someone who can edit the tables would try.
//! `kycd audit verify` must exit 1 naming what it found and 0 on an intact
//! chain, reading without writing; `kycd serve` must refuse to start over a
//! chain cut short (unless told to, which it records) and `/readyz` must
//! fail while one is being served. Without `KYCD_TEST_POSTGRES_URL` these
//! print a notice and pass, except under `CI=true`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kycd_log::anchor::{AnchoredChain, AuditOptions};
use kycd_log::audit::{Audit, Head, NewAudit, STARTED_OVER_BROKEN};
use kycd_log::postgres::anchor::{attach, PgChain};
use kycd_log::postgres::log::PgLog;
use kycd_log::postgres::store::PgStore;
use kycd_log::postgres::testing::{url_or_skip, Schemas};
use kycd_log::postgres::{Database, PoolSettings};
use kycd_log::EventLog;
use serde_json::json;

/// A test's schema and data directory (which holds the audit key).
struct Pg {
    schemas: Schemas,
    url: String,
    root: tempfile::TempDir,
    db: Database,
}

impl Pg {
    async fn new(test: &str) -> Option<Pg> {
        let url = url_or_skip(test)?;
        let schemas = Schemas::new(&url).await;
        let url = schemas.url_of(&schemas.schema().await);
        let db = Database::connect(&url, &PoolSettings::default())
            .await
            .unwrap();
        Some(Pg {
            schemas,
            url,
            root: tempfile::tempdir().unwrap(),
            db,
        })
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Run an instance's audit side the way `kycd serve` does (key, start
    /// check, anchoring task holding the lease), append `n` records, and
    /// stop it, which anchors the head.
    async fn serve_and_append(&self, from: usize, n: usize) {
        std::fs::create_dir_all(self.dir()).unwrap();
        let db = Database::connect(&self.url, &PoolSettings::default())
            .await
            .unwrap();
        let store = PgStore::open(db.clone()).await.unwrap();
        let log: Arc<dyn EventLog> = Arc::new(PgLog::open(db, Default::default()).await.unwrap());
        let anchoring = attach(&store, &self.dir(), &AuditOptions::default(), 900)
            .await
            .unwrap();
        for i in from..from + n {
            store
                .audit(vec![NewAudit {
                    at_ms: 1_000 + i as i64,
                    actor: "kycd:policy".into(),
                    action: "decision".into(),
                    target: Some(format!("session-{i}")),
                    details: json!({"decision_id": format!("dec_{i}"), "outcome": "decline"}),
                }])
                .await
                .unwrap();
        }
        let (_stop, stopped) = tokio::sync::watch::channel(true);
        let (_hold, held) = tokio::sync::watch::channel(true);
        anchoring
            .while_holding(held)
            .run(log.clone(), || 2_000, stopped)
            .await;
        log.shutdown().await;
    }

    /// 150 keyed records, anchored twice (at 100 and at 150).
    async fn chain(test: &str) -> Option<Pg> {
        let pg = Pg::new(test).await?;
        pg.serve_and_append(0, 100).await;
        pg.serve_and_append(100, 50).await;
        let (code, out) = pg.verify();
        assert_eq!(code, 0, "{out}");
        Some(pg)
    }

    fn verify(&self) -> (i32, String) {
        verify_at(&self.url, &self.dir())
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sql).execute(self.db.pool()).await.unwrap();
    }

    /// Delete the records after `keep`, and with `move_head` the head row
    /// back to it as well: then the chain alone is a valid, shorter chain.
    async fn truncate_to(&self, keep: u64, move_head: bool) {
        self.exec(&format!("DELETE FROM audit WHERE seq > {keep}"))
            .await;
        if move_head {
            self.exec(&format!(
                "UPDATE audit_head SET seq = a.seq, hash = a.hash, alg = a.alg
                 FROM audit a WHERE a.seq = {keep} AND audit_head.id = 1"
            ))
            .await;
        }
    }

    fn chain_reader(&self) -> PgChain {
        PgChain::new(self.db.clone())
    }

    async fn head(&self) -> Option<Head> {
        self.chain_reader().head().await.unwrap()
    }

    async fn anchored(&self) -> Option<(u64, Head)> {
        self.chain_reader()
            .newest_anchor()
            .await
            .unwrap()
            .map(|a| (a.offset, a.head))
    }

    /// Wait until the newest anchor in the log is the chain's head.
    async fn wait_anchored(&self, what: &str) -> (u64, Head) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (head, anchored) = (self.head().await, self.anchored().await);
            if let (Some(head), Some((offset, a))) = (head, anchored) {
                if a == head {
                    return (offset, a);
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the head was never anchored"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn serve_envs(&self, instance: &str) -> Vec<(&'static str, String)> {
        vec![
            ("KYCD_DATABASE_URL", self.url.clone()),
            ("KYCD_INSTANCE_ID", instance.to_owned()),
        ]
    }

    async fn finish(self) {
        self.db.close().await;
        self.schemas.drop_all().await;
    }
}

fn verify_at(url: &str, dir: &Path) -> (i32, String) {
    support::audit_verify(dir, &[("KYCD_DATABASE_URL", url)])
}

fn assert_tampered(pg: &Pg, names: &[&str]) {
    let (code, out) = pg.verify();
    assert_eq!(code, 1, "{out}");
    for name in names {
        assert!(out.contains(name), "expected {name:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_chain_verifies_against_every_anchor_in_the_database() {
    let Some(pg) = Pg::chain("audit verify on PostgreSQL").await else {
        return;
    };
    let (code, out) = pg.verify();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("audit chain intact: 150 records, all keyed")
            && out.contains("anchored in the event log up to record 150"),
        "{out}"
    );
    assert!(!out.contains("unanchored tail"), "{out}");
    pg.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_newest_records_is_a_truncation_even_with_the_head_row_moved() {
    let Some(pg) = Pg::chain("audit verify on PostgreSQL").await else {
        return;
    };
    let (offset, _) = pg.anchored().await.unwrap();
    // Rows deleted, the head row left alone: it names the missing head.
    pg.truncate_to(140, false).await;
    assert_tampered(
        &pg,
        &["truncated: the audit head anchors head record 150 but the chain ends at record 140"],
    );
    // The head row moved back as well: the log's anchor still names it.
    pg.truncate_to(140, true).await;
    assert_tampered(
        &pg,
        &[&format!(
            "truncated: the event log (offset {offset}) anchors head record 150 but the chain \
             ends at record 140"
        )],
    );
    pg.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_mac_is_found() {
    let Some(pg) = Pg::chain("audit verify on PostgreSQL").await else {
        return;
    };
    pg.exec("UPDATE audit SET hash = md5(hash) || md5(prev_hash) WHERE seq = 120")
        .await;
    assert_tampered(&pg, &["edited record 120"]);
    pg.finish().await;
}

/// Someone holding the key cuts the chain at 119 and appends new records
/// through kycd's own code: a chain of 150 valid records with a head row
/// that agrees. Only the anchors show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_rewritten_with_the_key_is_caught_by_its_anchor() {
    let Some(pg) = Pg::chain("audit verify on PostgreSQL").await else {
        return;
    };
    let (offset, _) = pg.anchored().await.unwrap();
    pg.truncate_to(119, true).await;
    let store = PgStore::open(pg.db.clone()).await.unwrap();
    store.set_audit_key(kycd_log::audit::AuditKey::load(&pg.dir().join("audit.key")).unwrap());
    for i in 119..150 {
        store
            .audit(vec![NewAudit {
                at_ms: 5_000 + i,
                actor: "kycd:policy".into(),
                action: "decision".into(),
                target: Some(format!("session-{i}")),
                details: json!({"decision_id": format!("dec_{i}"), "outcome": "approve"}),
            }])
            .await
            .unwrap();
    }
    assert_eq!(pg.head().await.map(|h| h.seq), Some(150));
    assert_tampered(
        &pg,
        &[&format!(
            "record 150 does not carry the MAC the event log (offset {offset}) anchors for it"
        )],
    );
    pg.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_without_kycd_cannot_be_verified_and_is_left_alone() {
    let Some(pg) = Pg::new("audit verify on PostgreSQL").await else {
        return;
    };
    let empty = pg.schemas.schema().await;
    let url = pg.schemas.url_of(&empty);
    let (code, out) = verify_at(&url, &pg.dir());
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("holds no kycd event log and audit trail"),
        "{out}"
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(&empty)
    .fetch_one(pg.db.pool())
    .await
    .unwrap();
    assert_eq!(tables, 0, "verification migrates nothing");

    let (code, out) = verify_at("postgres://kycd:hunter2@127.0.0.1:1/kycd", &pg.dir());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot reach the database"), "{out}");
    assert!(
        !out.contains("hunter2"),
        "the URL's password never shows: {out}"
    );
    pg.finish().await;
}

/// `/readyz` until `ready` says what is wanted of its answer.
async fn wait_ready(base: &str, want: impl Fn(u16, &serde_json::Value) -> bool, what: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            if want(status, &body) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: last /readyz {status} {body}"
            );
        }
        assert!(Instant::now() < deadline, "{what}: /readyz never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn failing_audit(status: u16, body: &serde_json::Value) -> bool {
    status == 503 && body["checks"]["audit_chain"] == "failing"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_anchors_and_a_truncation_fails_readiness_and_stops_the_next_start() {
    let Some(pg) = Pg::chain("kycd serve on PostgreSQL").await else {
        return;
    };
    let log = pg.root.path().join("serve.log");
    let mut server = support::Server::start(&pg.dir(), &log, &pg.serve_envs("kycd-a"));
    // The server's own records (its policy) are anchored by it.
    let (offset, anchored) = pg.wait_anchored("the running server").await;
    assert!(anchored.seq > 150, "{anchored:?}");
    wait_ready(&server.base, |s, _| s == 200, "an intact chain").await;

    pg.truncate_to(140, true).await;
    wait_ready(&server.base, failing_audit, "a truncated chain").await;
    assert_eq!(
        pg.anchored().await,
        Some((offset, anchored.clone())),
        "the server did not anchor the truncated head"
    );
    server.kill();

    let refused = support::serve_refused(&pg.dir(), &log, &pg.serve_envs("kycd-a"));
    assert!(
        refused.contains(&format!(
            "the audit chain is broken: truncated: the event log (offset {offset}) anchors head \
             record {} but the chain ends at record 140",
            anchored.seq
        )) && refused.contains("--allow-broken-audit"),
        "{refused}"
    );

    // Told to, it serves, records that it did, and anchors from there on.
    let mut envs = pg.serve_envs("kycd-a");
    envs.push(("KYCD_ALLOW_BROKEN_AUDIT", "true".to_owned()));
    let mut server = support::Server::start(&pg.dir(), &log, &envs);
    let records = PgStore::open(pg.db.clone())
        .await
        .unwrap()
        .list_audit(i64::MIN, 140, 1)
        .await
        .unwrap();
    assert_eq!(records[0].seq, 141);
    assert_eq!(records[0].action, STARTED_OVER_BROKEN);
    assert!(
        records[0].details["found"]
            .as_str()
            .is_some_and(|f| f.contains("truncated:") && f.contains("chain ends at record 140")),
        "{:?}",
        records[0].details
    );
    pg.wait_anchored("the server started over a broken chain")
        .await;
    wait_ready(
        &server.base,
        |s, b| s == 200 && b["checks"]["audit_chain"] == "ok",
        "the accepted chain",
    )
    .await;
    server.kill();

    // The truncation stays visible to the auditor, with the acknowledgement.
    let (code, out) = pg.verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("note: record 141: the server was started over a broken chain")
            && out.contains("truncated:"),
        "{out}"
    );
    // One acknowledged start is enough.
    drop(support::Server::start(
        &pg.dir(),
        &log,
        &pg.serve_envs("kycd-a"),
    ));
    pg.finish().await;
}
