//! Where kycd keeps its event log and store, chosen here and nowhere else:
//! the embedded SQLite files in `KYCD_DATA_DIR` by default, PostgreSQL when
//! `KYCD_DATABASE_URL` names one.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use kycd_log::access::Access;
use kycd_log::audit::Audit;
use kycd_log::cases::Cases;
use kycd_log::outbox::Outbox;
use kycd_log::postgres::log::PgLog;
use kycd_log::postgres::store::PgStore;
use kycd_log::postgres::{Database, PoolSettings};
use kycd_log::sqlite_log::{SqliteLog, SqliteLogOptions};
use kycd_log::store::{SqliteStore, Store};
use kycd_log::EventLog;

use crate::settings::Settings;

/// The backend and what only it has.
#[derive(Clone)]
pub enum Backend {
    /// `events.db` and `store.db` in the data directory, one process.
    Embedded {
        store: Arc<SqliteStore>,
        log_path: PathBuf,
        store_path: PathBuf,
    },
    /// One database for the log and the store, shared by any number of
    /// instances.
    Postgres { db: Database, store: Arc<PgStore> },
}

impl Backend {
    /// How `/api/v1/cluster` and the logs name it.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded { .. } => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }
}

/// The event log and every store trait, opened.
#[derive(Clone)]
pub struct Storage {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    pub outbox: Arc<dyn Outbox>,
    pub audit: Arc<dyn Audit>,
    pub access: Arc<dyn Access>,
    pub cases: Arc<dyn Cases>,
    pub backend: Backend,
}

/// Open the backend the settings name. `on_store_thread_start` runs on the
/// embedded store's background thread (the server lowers its priority).
pub async fn open(
    settings: &Settings,
    on_store_thread_start: impl FnOnce() + Send + 'static,
) -> anyhow::Result<Storage> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("create data directory {}", settings.data_dir.display()))?;
    match &settings.database_url {
        Some(url) => {
            let pool = PoolSettings {
                max_connections: settings.database_max_connections,
                application_name: format!("kycd {}", instance_id(settings)),
            };
            // The error never holds the URL (it may hold a password).
            let db = Database::connect(url.expose(), &pool)
                .await
                .context("connect to the database (KYCD_DATABASE_URL)")?;
            let log = PgLog::open(db.clone(), Default::default())
                .await
                .context("open the event log in the database")?;
            let store = Arc::new(
                PgStore::open(db.clone())
                    .await
                    .context("open the store in the database")?,
            );
            Ok(Storage {
                log: Arc::new(log),
                store: store.clone(),
                outbox: store.clone(),
                audit: store.clone(),
                access: store.clone(),
                cases: store.clone(),
                backend: Backend::Postgres { db, store },
            })
        }
        None => {
            let log_path = settings.data_dir.join("events.db");
            let log = SqliteLog::open(
                &log_path,
                SqliteLogOptions {
                    durability: settings.durability,
                    max_db_bytes: settings.max_log_bytes,
                    ..SqliteLogOptions::default()
                },
            )
            .with_context(|| format!("open event log {}", log_path.display()))?;
            let store_path = settings.data_dir.join("store.db");
            // The store is a projection of the log: after a power loss it
            // may roll back to an earlier commit, but its offset rolls back
            // with it and the projector derives the same rows again. So it
            // never pays for an fsync per commit; the log alone carries
            // durability.
            let store = Arc::new(
                SqliteStore::open_with(&store_path, false, on_store_thread_start)
                    .with_context(|| format!("open store {}", store_path.display()))?,
            );
            Ok(Storage {
                log: Arc::new(log),
                store: store.clone(),
                outbox: store.clone(),
                audit: store.clone(),
                access: store.clone(),
                cases: store.clone(),
                backend: Backend::Embedded {
                    store,
                    log_path,
                    store_path,
                },
            })
        }
    }
}

/// `KYCD_INSTANCE_ID`, or the host name and process id.
pub fn instance_id(settings: &Settings) -> String {
    settings.instance_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "kycd".to_owned());
        format!("{host}-{}", std::process::id())
    })
}
