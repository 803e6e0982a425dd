//! Instances and leases on PostgreSQL: several `kycd serve` processes on
//! one database find each other and share work through rows, with every
//! time taken from the database's clock (docs/cluster-design.md, section 2).
//!
//! - [`Cluster::join`] registers this instance under its id, bumping the
//!   id's epoch: a stale process still running under the same id fails its
//!   next [`Cluster::heartbeat`] with [`ClusterError::Replaced`] and stops.
//! - A [`Lease`] names work only one instance may do at a time (a
//!   partition's projection, the timers). [`Cluster::acquire`] takes it when
//!   free or expired and bumps its epoch, the fencing token;
//!   [`Cluster::renew`] extends it while owner and epoch still match;
//!   [`Cluster::release`] hands it back. A lease not renewed expires after
//!   its time to live, so a dead owner's work moves without anyone
//!   declaring it dead.
//! - [`fence`] checks a lease inside another transaction (the projection's
//!   commit) under `FOR SHARE`: a takeover's `UPDATE` waits for that
//!   commit, or the commit sees the new epoch and writes nothing.

use std::time::Duration;

use serde::Serialize;
use sqlx::{PgConnection, Row};

use super::{store_error, Database};
use crate::store::{Fence, StoreError};

/// What a lease or an instance operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Another process started under this instance id since this one did.
    #[error("instance {id} was started again elsewhere (epoch {theirs} after ours, {ours}); this process stops")]
    Replaced { id: String, ours: i64, theirs: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A lease this instance holds: its name and the epoch it was acquired at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub name: String,
    pub epoch: i64,
}

impl Lease {
    /// The fence a commit made under this lease carries.
    pub fn fence(&self, owner: &str) -> Fence {
        Fence {
            owner: owner.to_owned(),
            lease: self.name.clone(),
            epoch: self.epoch,
        }
    }
}

/// This instance's membership of the cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    db: Database,
    id: String,
    epoch: i64,
}

/// An instance as the registry shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub epoch: i64,
    pub version: String,
    /// Unix ms, by the database's clock.
    pub started_at_ms: i64,
    pub last_heartbeat_ms: i64,
    /// Milliseconds since the last heartbeat, by the database's clock.
    pub heartbeat_age_ms: i64,
}

/// A lease as the registry shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseInfo {
    pub name: String,
    pub owner: Option<String>,
    pub epoch: i64,
    /// Unix ms, by the database's clock; `None` for a lease never taken.
    pub expires_at_ms: Option<i64>,
    pub expired: bool,
}

/// A lease's state as [`Cluster::lease_states`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub name: String,
    pub owner: Option<String>,
    /// How long ago it expired; `None` while it is live.
    pub expired_for_ms: Option<i64>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Cluster {
    /// Register (or re-register) instance `id`, running `version`.
    pub async fn join(db: Database, id: &str, version: &str) -> Result<Self, ClusterError> {
        let epoch: i64 = sqlx::query_scalar(
            "INSERT INTO cluster_instances (instance_id, epoch, started_at, heartbeat_at, version)
             VALUES ($1, 1, now(), now(), $2)
             ON CONFLICT (instance_id) DO UPDATE SET epoch = cluster_instances.epoch + 1,
               started_at = now(), heartbeat_at = now(), version = excluded.version
             RETURNING epoch",
        )
        .bind(id)
        .bind(version)
        .fetch_one(db.pool())
        .await
        .map_err(store_error)?;
        // Instances silent for a day are gone for good (a default id names
        // the process, so every restart adds one).
        sqlx::query("DELETE FROM cluster_instances WHERE heartbeat_at < now() - interval '1 day'")
            .execute(db.pool())
            .await
            .map_err(store_error)?;
        Ok(Self {
            db,
            id: id.to_owned(),
            epoch,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Say this instance is alive. Fails with [`ClusterError::Replaced`]
    /// when the id was started again since [`Cluster::join`].
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        let theirs: Option<i64> = sqlx::query_scalar(
            "UPDATE cluster_instances SET heartbeat_at = CASE WHEN epoch = $2 THEN now() ELSE heartbeat_at END
             WHERE instance_id = $1 RETURNING epoch",
        )
        .bind(&self.id)
        .bind(self.epoch)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?;
        match theirs {
            Some(theirs) if theirs == self.epoch => Ok(()),
            Some(theirs) => Err(ClusterError::Replaced {
                id: self.id.clone(),
                ours: self.epoch,
                theirs,
            }),
            // Removed by an operator: register again, same epoch.
            None => {
                sqlx::query(
                    "INSERT INTO cluster_instances (instance_id, epoch, started_at, heartbeat_at, version)
                     VALUES ($1, $2, now(), now(), '') ON CONFLICT (instance_id) DO NOTHING",
                )
                .bind(&self.id)
                .bind(self.epoch)
                .execute(self.db.pool())
                .await
                .map_err(store_error)?;
                Ok(())
            }
        }
    }

    /// Take lease `name` for `ttl` if it is free, expired, or held by this
    /// instance id at this run's epoch or an earlier run's (taken back at
    /// once: after a restart, or after a failed renewal left it unsure);
    /// `None` when another instance, or a later run of this id, holds it.
    /// Every acquisition bumps the lease's epoch, so a fence taken before
    /// no longer holds.
    pub async fn acquire(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, ClusterError> {
        sqlx::query("INSERT INTO cluster_leases (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .execute(self.db.pool())
            .await
            .map_err(store_error)?;
        let epoch: Option<i64> = sqlx::query_scalar(
            "UPDATE cluster_leases SET owner = $2, owner_epoch = $4, epoch = epoch + 1,
               expires_at = now() + make_interval(secs => $3::double precision / 1000)
             WHERE name = $1
               AND (owner IS NULL OR expires_at < now() OR (owner = $2 AND owner_epoch <= $4))
             RETURNING epoch",
        )
        .bind(name)
        .bind(&self.id)
        .bind(millis(ttl))
        .bind(self.epoch)
        .fetch_optional(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(epoch.map(|epoch| Lease {
            name: name.to_owned(),
            epoch,
        }))
    }

    /// Extend `lease` by `ttl`; `false` when it was lost (expired and taken
    /// by another instance, or released), in which case the work it
    /// guarded must stop.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, ClusterError> {
        let done = sqlx::query(
            "UPDATE cluster_leases SET expires_at = now() + make_interval(secs => $4::double precision / 1000)
             WHERE name = $1 AND owner = $2 AND epoch = $3",
        )
        .bind(&lease.name)
        .bind(&self.id)
        .bind(lease.epoch)
        .bind(millis(ttl))
        .execute(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    /// Extend every lease of `leases` by `ttl` in one statement; those
    /// still held (the others were lost and their work must stop).
    pub async fn renew_all(
        &self,
        leases: &[Lease],
        ttl: Duration,
    ) -> Result<Vec<Lease>, ClusterError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = leases.iter().map(|l| l.name.as_str()).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.epoch).collect();
        let renewed: Vec<String> = sqlx::query_scalar(
            "UPDATE cluster_leases c SET expires_at = now() + make_interval(secs => $3::double precision / 1000)
             FROM UNNEST($1::text[], $4::bigint[]) AS h(name, epoch)
             WHERE c.name = h.name AND c.epoch = h.epoch AND c.owner = $2
             RETURNING c.name",
        )
        .bind(&names)
        .bind(&self.id)
        .bind(millis(ttl))
        .bind(&epochs)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(leases
            .iter()
            .filter(|l| renewed.contains(&l.name))
            .cloned()
            .collect())
    }

    /// The leases whose name starts with `prefix`: owner (`None` when
    /// free) and, once expired, for how long (ms, by the database's clock;
    /// `None` while live). A lease never taken has no row.
    pub async fn lease_states(&self, prefix: &str) -> Result<Vec<LeaseState>, ClusterError> {
        let rows = sqlx::query(
            "SELECT name, owner,
               CASE WHEN expires_at = '-infinity' THEN 9223372036854775807
                    WHEN expires_at < now() THEN (extract(epoch FROM now() - expires_at) * 1000)::bigint
               END
             FROM cluster_leases WHERE starts_with(name, $1)",
        )
        .bind(prefix)
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                Ok(LeaseState {
                    name: r.try_get(0)?,
                    owner: r.try_get(1)?,
                    expired_for_ms: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| store_error(e).into())
    }

    /// Leave the cluster (a clean stop, after releasing the leases): the
    /// registry forgets this run at once, so the others place partitions
    /// without it rather than waiting for its heartbeat to age.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        sqlx::query("DELETE FROM cluster_instances WHERE instance_id = $1 AND epoch = $2")
            .bind(&self.id)
            .bind(self.epoch)
            .execute(self.db.pool())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Hand `lease` back at once (a clean stop), if still held.
    pub async fn release(&self, lease: &Lease) -> Result<(), ClusterError> {
        sqlx::query(
            "UPDATE cluster_leases SET owner = NULL, expires_at = now()
             WHERE name = $1 AND owner = $2 AND epoch = $3",
        )
        .bind(&lease.name)
        .bind(&self.id)
        .bind(lease.epoch)
        .execute(self.db.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    /// Every registered instance, by id.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, ClusterError> {
        let rows = sqlx::query(
            "SELECT instance_id, epoch, version,
               (extract(epoch FROM started_at) * 1000)::bigint,
               (extract(epoch FROM heartbeat_at) * 1000)::bigint,
               (extract(epoch FROM now() - heartbeat_at) * 1000)::bigint
             FROM cluster_instances ORDER BY instance_id",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                Ok(InstanceInfo {
                    id: r.try_get(0)?,
                    epoch: r.try_get(1)?,
                    version: r.try_get(2)?,
                    started_at_ms: r.try_get(3)?,
                    last_heartbeat_ms: r.try_get(4)?,
                    heartbeat_age_ms: r.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| store_error(e).into())
    }

    /// Every lease, by name.
    pub async fn leases(&self) -> Result<Vec<LeaseInfo>, ClusterError> {
        let rows = sqlx::query(
            "SELECT name, owner, epoch,
               CASE WHEN expires_at = '-infinity' THEN NULL
                    ELSE (extract(epoch FROM expires_at) * 1000)::bigint END,
               expires_at < now()
             FROM cluster_leases ORDER BY name",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                Ok(LeaseInfo {
                    name: r.try_get(0)?,
                    owner: r.try_get(1)?,
                    epoch: r.try_get(2)?,
                    expires_at_ms: r.try_get(3)?,
                    expired: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| store_error(e).into())
    }
}

/// Inside a transaction: fail with [`StoreError::LeaseLost`] unless the
/// fence's owner still holds its lease at its epoch, and keep the lease
/// from being taken over (`FOR SHARE`) until the transaction ends.
pub(crate) async fn fence(tx: &mut PgConnection, fence: &Fence) -> Result<(), StoreError> {
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT epoch FROM cluster_leases WHERE name = $1 AND owner = $2 FOR SHARE",
    )
    .bind(&fence.lease)
    .bind(&fence.owner)
    .fetch_optional(&mut *tx)
    .await
    .map_err(store_error)?;
    match held {
        Some(epoch) if epoch == fence.epoch => Ok(()),
        held => Err(StoreError::LeaseLost {
            lease: fence.lease.clone(),
            epoch: fence.epoch,
            now: held,
        }),
    }
}
