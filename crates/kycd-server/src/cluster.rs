//! This instance's part in a cluster of `kycd serve` processes on one
//! database: its heartbeat, and the leases that decide which instance does
//! what only one may do at a time (docs/cluster-design.md):
//!
//! | Lease | Work | Holder |
//! |---|---|---|
//! | `partition/0` | the projection (decisions) | one instance; its commits are fenced |
//! | `timers` | reconciliation, step-up expiry | one instance |
//! | `lane:operator.webhook` | operator webhooks, in order | one instance |
//!
//! Intake, the API, the console and the Didit outbox lane run on every
//! instance. Leases last [`LEASE_TTL`] and are renewed every [`TICK`]: a
//! killed holder's work moves within the time to live plus a tick. With
//! the embedded store there is one process, and [`Roles::single`] holds
//! everything.

use std::sync::Arc;
use std::time::Duration;

use kycd_log::postgres::cluster::{Cluster, ClusterError, InstanceInfo, Lease, LeaseInfo};
use kycd_log::store::Fence;
use serde::Serialize;
use tokio::sync::watch;

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often leases are renewed, free ones sought and the heartbeat sent.
pub const TICK: Duration = Duration::from_secs(1);

/// The projection's lease (one partition, for now).
pub const PROJECTION: &str = "partition/0";
/// Reconciliation and step-up expiry.
pub const TIMERS: &str = "timers";
/// Operator webhooks, one at a time in order.
pub const OPERATOR_LANE: &str = "lane:operator.webhook";

const LEASES: [&str; 3] = [PROJECTION, TIMERS, OPERATOR_LANE];

/// What this instance currently holds, as the work loops see it.
#[derive(Clone, Debug)]
pub struct Roles {
    pub projection: watch::Receiver<Option<Fence>>,
    pub timers: watch::Receiver<bool>,
    pub operator_lane: watch::Receiver<bool>,
}

impl Roles {
    /// One process owns everything (the embedded store).
    pub fn single() -> Self {
        Self {
            projection: watch::channel(None).1,
            timers: watch::channel(true).1,
            operator_lane: watch::channel(true).1,
        }
    }

    pub fn timers(&self) -> bool {
        *self.timers.borrow()
    }

    pub fn operator_lane(&self) -> bool {
        *self.operator_lane.borrow()
    }
}

/// This instance's membership: the registry handle and the senders of
/// [`Roles`].
pub struct Membership {
    cluster: Cluster,
    projection: watch::Sender<Option<Fence>>,
    timers: watch::Sender<bool>,
    operator_lane: watch::Sender<bool>,
    held: std::sync::Mutex<Vec<Lease>>,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub backend: &'static str,
    pub this_instance: String,
    pub lease_ttl_ms: u64,
    pub instances: Vec<InstanceView>,
    pub leases: Vec<LeaseInfo>,
}

#[derive(Debug, Serialize)]
pub struct InstanceView {
    #[serde(flatten)]
    pub instance: InstanceInfo,
    /// Whether its last heartbeat is younger than a lease's time to live.
    pub alive: bool,
    /// The leases it holds (not expired).
    pub leases: Vec<String>,
}

impl Membership {
    /// Register in the cluster; nothing is held until [`Membership::run`].
    pub async fn join(cluster: Cluster) -> (Arc<Self>, Roles) {
        let (projection, projection_rx) = watch::channel(None);
        let (timers, timers_rx) = watch::channel(false);
        let (operator_lane, operator_rx) = watch::channel(false);
        (
            Arc::new(Self {
                cluster,
                projection,
                timers,
                operator_lane,
                held: std::sync::Mutex::new(Vec::new()),
            }),
            Roles {
                projection: projection_rx,
                timers: timers_rx,
                operator_lane: operator_rx,
            },
        )
    }

    pub fn id(&self) -> &str {
        self.cluster.id()
    }

    /// This run's epoch of the instance id (bumped by every start).
    pub fn epoch(&self) -> i64 {
        self.cluster.epoch()
    }

    /// Heartbeat and keep leases until `stop`, then release them. Returns
    /// an error when another process started under this instance's id:
    /// the caller must stop serving.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> Result<(), ClusterError> {
        loop {
            if let Err(e) = self.tick().await {
                if let ClusterError::Replaced { .. } = e {
                    self.publish(&[]);
                    return Err(e);
                }
                // The database is away: leases lapse by themselves; say
                // nothing is held once they would have.
                tracing::warn!(error = %e, "cluster heartbeat failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        self.publish(&[]);
        for lease in &held {
            if let Err(e) = self.cluster.release(lease).await {
                tracing::warn!(error = %e, lease = %lease.name, "could not release a lease; it expires by itself");
            }
        }
        Ok(())
    }

    async fn tick(&self) -> Result<(), ClusterError> {
        let before = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match self.keep(&before).await {
            Ok(now) => {
                for l in now.iter().filter(|l| !before.contains(l)) {
                    tracing::info!(lease = %l.name, epoch = l.epoch, "lease acquired");
                }
                for l in before
                    .iter()
                    .filter(|l| !now.iter().any(|n| n.name == l.name))
                {
                    tracing::warn!(lease = %l.name, "lease lost to another instance");
                }
                *self.held.lock().unwrap_or_else(|p| p.into_inner()) = now.clone();
                self.publish(&now);
                Ok(())
            }
            Err(e) => {
                // Unknown whether the renewals went through: stop the work
                // now rather than risk it running on a lapsed lease. The
                // next tick takes this instance's leases back at once.
                self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
                self.publish(&[]);
                Err(e)
            }
        }
    }

    /// Heartbeat, renew what is held and seek what is not; the leases held
    /// afterwards.
    async fn keep(&self, before: &[Lease]) -> Result<Vec<Lease>, ClusterError> {
        self.cluster.heartbeat().await?;
        let mut now = Vec::new();
        for name in LEASES {
            let lease = match before.iter().find(|l| l.name == name) {
                Some(l) if self.cluster.renew(l, LEASE_TTL).await? => Some(l.clone()),
                _ => self.cluster.acquire(name, LEASE_TTL).await?,
            };
            now.extend(lease);
        }
        Ok(now)
    }

    fn publish(&self, held: &[Lease]) {
        let fence = held
            .iter()
            .find(|l| l.name == PROJECTION)
            .map(|l| l.fence(self.cluster.id()));
        self.projection.send_if_modified(|f| {
            let changed = *f != fence;
            *f = fence;
            changed
        });
        let has = |name: &str| held.iter().any(|l| l.name == name);
        self.timers
            .send_if_modified(|t| std::mem::replace(t, has(TIMERS)) != has(TIMERS));
        self.operator_lane
            .send_if_modified(|t| std::mem::replace(t, has(OPERATOR_LANE)) != has(OPERATOR_LANE));
    }

    /// The registry as `GET /api/v1/cluster` shows it.
    pub async fn view(&self, backend: &'static str) -> Result<ClusterView, ClusterError> {
        let instances = self.cluster.instances().await?;
        let leases = self.cluster.leases().await?;
        let ttl_ms = LEASE_TTL.as_millis() as i64;
        Ok(ClusterView {
            backend,
            this_instance: self.cluster.id().to_owned(),
            lease_ttl_ms: ttl_ms as u64,
            instances: instances
                .into_iter()
                .map(|i| InstanceView {
                    alive: i.heartbeat_age_ms < ttl_ms,
                    leases: leases
                        .iter()
                        .filter(|l| !l.expired && l.owner.as_deref() == Some(i.id.as_str()))
                        .map(|l| l.name.clone())
                        .collect(),
                    instance: i,
                })
                .collect(),
            leases,
        })
    }
}
