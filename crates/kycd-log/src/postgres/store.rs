//! [`PgStore`]: the projection store on PostgreSQL.

use std::sync::Arc;

use tokio::sync::watch;

use super::Database;
use crate::audit::{AuditKey, ChainState, Head};
use crate::store::StoreError;

/// Every store trait over one [`Database`]. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) db: Database,
    pub(crate) chain: Arc<ChainState>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// The store in `db` (already migrated by [`Database::connect`]).
    pub async fn open(db: Database) -> Result<Self, StoreError> {
        let mut conn = db.pool().acquire().await.map_err(super::store_error)?;
        let head = super::audit::head(&mut conn).await?;
        drop(conn);
        Ok(Self {
            db,
            chain: ChainState::new(head),
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Key every audit record appended from now on. Set once, before
    /// serving; a second call keeps the first key.
    pub fn set_audit_key(&self, key: AuditKey) {
        self.chain.set_key(key);
    }

    /// The newest audit record, updated after each commit that appended
    /// records through this store.
    pub fn subscribe_audit_head(&self) -> watch::Receiver<Option<Head>> {
        self.chain.subscribe()
    }

    /// Record that the chain is known broken (the server started over it).
    pub fn mark_audit_broken(&self) {
        self.chain.mark_broken();
    }
}
