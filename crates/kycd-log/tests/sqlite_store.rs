//! The SQLite store against every store-side conformance suite, keyed as
//! `kycd serve` runs it and, for the audit chain, unkeyed as well.
//!
//! The suites use the traits only (`Store`, `Outbox`, `Audit`, `Access`,
//! `Cases`); a second backend runs the same functions.

use std::sync::{Arc, Mutex};

use kycd_log::access::suite::run_access_suite;
use kycd_log::audit::suite::run_audit_suite;
use kycd_log::audit::AuditKey;
use kycd_log::cases::suite::run_cases_suite;
use kycd_log::outbox::suite::run_outbox_suite;
use kycd_log::store::suite::run_store_suite;
use kycd_log::store::{SqliteStore, Store};
use tempfile::TempDir;

/// Fresh stores, each in its own directory, which lives as long as this.
#[derive(Default)]
struct Stores {
    dirs: Mutex<Vec<TempDir>>,
}

impl Stores {
    fn open(&self, keyed: bool) -> Arc<SqliteStore> {
        let dir = TempDir::new().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"), true).unwrap();
        if keyed {
            store.set_audit_key(AuditKey::from_bytes([7; 32]));
        }
        self.dirs.lock().unwrap().push(dir);
        Arc::new(store)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_store_suite() {
    let stores = Stores::default();
    run_store_suite(|| {
        let s = stores.open(true);
        async move { s as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_outbox_suite() {
    let stores = Stores::default();
    run_outbox_suite(|| {
        let s = stores.open(true);
        async move { s }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_audit_suite_keyed() {
    let stores = Stores::default();
    run_audit_suite(|| {
        let s = stores.open(true);
        async move { s }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_audit_suite_unkeyed() {
    let stores = Stores::default();
    run_audit_suite(|| {
        let s = stores.open(false);
        async move { s }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_access_suite() {
    let stores = Stores::default();
    run_access_suite(|| {
        let s = stores.open(true);
        async move { s }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_cases_suite() {
    let stores = Stores::default();
    run_cases_suite(|| {
        let s = stores.open(true);
        async move { s }
    })
    .await;
}
