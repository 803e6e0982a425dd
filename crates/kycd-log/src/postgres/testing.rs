//! Fresh, empty databases for tests: one schema each in the PostgreSQL
//! that `KYCD_TEST_POSTGRES_URL` names (`.ci/postgres.sh` makes sure one
//! runs), so test runs and checks never see each other's rows.
//!
//! Without the variable a test prints a notice and passes, except under
//! `CI=true`, where it fails: CI must not skip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgPool;

use super::{schemas, Database, PoolSettings};

/// The variable naming the test server.
pub const URL_VAR: &str = "KYCD_TEST_POSTGRES_URL";

/// Schemas left by runs older than this are dropped when a run starts
/// (a run that panicked leaves its schemas behind).
const STALE_AFTER_SECS: u64 = 6 * 3600;

/// `KYCD_TEST_POSTGRES_URL`, or `None` after saying why the test skips.
/// Panics under `CI=true` without it.
pub fn url_or_skip(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{URL_VAR} must name a PostgreSQL server under CI=true (.ci/postgres.sh starts one)"
            );
            eprintln!("note: {test} skipped: set {URL_VAR} (e.g. postgres://postgres@127.0.0.1:5432/test)");
            None
        }
    }
}

/// Makes schemas `kycd_t_<unix secs>_<pid>_<n>` and drops them again.
pub struct Schemas {
    url: String,
    admin: PgPool,
    made: Mutex<Vec<String>>,
    stamp: u64,
}

impl Schemas {
    /// Connect to `url`, dropping stale schemas of earlier runs.
    pub async fn new(url: &str) -> Self {
        let admin = schemas::admin(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {URL_VAR}: {e}"));
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'kycd\\_t\\_%'",
        )
        .fetch_all(&admin)
        .await
        .expect("list test schemas");
        for name in names {
            let made_at = name
                .split('_')
                .nth(2)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            if made_at + STALE_AFTER_SECS < stamp {
                let _ = schemas::drop_schema(&admin, &name).await;
            }
        }
        Self {
            url: url.to_owned(),
            admin,
            made: Mutex::new(Vec::new()),
            stamp,
        }
    }

    /// A new, empty schema's name.
    pub async fn schema(&self) -> String {
        // Process-wide: several `Schemas` of one test binary share a stamp.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("kycd_t_{}_{}_{n}", self.stamp, std::process::id());
        schemas::create(&self.admin, &name)
            .await
            .expect("create a test schema");
        self.made.lock().unwrap().push(name.clone());
        name
    }

    /// The URL of the server with `search_path` set to `schema`, as an
    /// operator would write it in `KYCD_DATABASE_URL`.
    pub fn url_of(&self, schema: &str) -> String {
        schemas::url_with_search_path(&self.url, schema)
    }

    /// A migrated database in a new schema.
    pub async fn database(&self) -> Database {
        let schema = self.schema().await;
        Database::connect(
            &self.url_of(&schema),
            &PoolSettings {
                max_connections: 8,
                ..PoolSettings::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("connect to the test schema {schema}: {e}"))
    }

    /// Drop every schema this made.
    pub async fn drop_all(&self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        for name in made {
            let _ = schemas::drop_schema(&self.admin, &name).await;
        }
    }
}
