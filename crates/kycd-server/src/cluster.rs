//! This instance's part in a cluster of `kycd serve` processes on one
//! database: its heartbeat, and the leases that decide which instance does
//! what only one may do at a time (docs/cluster-design.md):
//!
//! | Lease | Work | Holder |
//! |---|---|---|
//! | `partition/<k>` | the projection (decisions) of partition k | one instance; its commits are fenced |
//! | `timers` | reconciliation, step-up expiry | one instance |
//! | `lane:operator.webhook` | operator webhooks, in order | one instance |
//! | `audit-anchor` | anchoring the audit chain's head in the log | one instance |
//!
//! Intake, the API, the console and the Didit outbox lane run on every
//! instance. Leases last [`LEASE_TTL`] and are renewed every [`TICK`]: a
//! killed holder's work moves within the time to live plus a tick. With
//! the embedded store there is one process, and [`Roles::single`] holds
//! everything.
//!
//! Partitions are placed by rendezvous hashing ([`desired_owner`]): each
//! tick an instance takes the free partitions that want it, hands back at
//! most [`MAX_RELEASES_PER_TICK`] that want another live instance, and
//! takes any left expired for [`TAKEOVER_GRACE`] whoever they want, so
//! instances joining or leaving move only their share, a few at a time.
//! The log has one partition until the projector spreads over them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kycd_log::postgres::cluster::{
    Cluster, ClusterError, InstanceInfo, Lease, LeaseInfo, LeaseState,
};
use kycd_log::store::Fence;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often leases are renewed, free ones sought and the heartbeat sent.
pub const TICK: Duration = Duration::from_secs(1);

/// On a stop, how long the leases are kept for the projector's last batch
/// (well within what is left of a lease renewed a tick ago).
pub const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// The projection's lease while the log has one partition.
pub const PROJECTION: &str = "partition/0";
/// Reconciliation and step-up expiry.
pub const TIMERS: &str = "timers";
/// Operator webhooks, one at a time in order.
pub const OPERATOR_LANE: &str = "lane:operator.webhook";
/// Anchoring the audit chain's head in the event log (`kycd_log::anchor`).
pub const AUDIT_ANCHOR: &str = "audit-anchor";

/// The leases of cluster-wide tasks, taken by whoever comes first.
const TASKS: [&str; 3] = [TIMERS, OPERATOR_LANE, AUDIT_ANCHOR];

/// What one process holds on the embedded store, as `GET /api/v1/cluster`
/// lists it.
pub const EMBEDDED_LEASES: [&str; 4] = [PROJECTION, TIMERS, OPERATOR_LANE, AUDIT_ANCHOR];

/// Partition leases are named this and the partition's number.
const PARTITION_PREFIX: &str = "partition/";

/// Rebalancing hands back at most this many partitions per tick.
pub const MAX_RELEASES_PER_TICK: usize = 4;

/// A partition lease expired (or handed back) this long is taken by any
/// instance, not only the one it wants: its desired owner had its chance.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(2);

/// The lease of partition `k`.
pub fn partition_lease(k: u32) -> String {
    format!("{PARTITION_PREFIX}{k}")
}

fn partition_number(lease: &str) -> Option<u32> {
    lease.strip_prefix(PARTITION_PREFIX)?.parse().ok()
}

/// The instance partition `k` wants among `live` ones: the highest
/// SHA-256 of the partition and the instance id (rendezvous hashing), so
/// that an instance joining or leaving moves only the partitions it wins
/// or held.
pub fn desired_owner<'a>(k: u32, live: &[&'a str]) -> Option<&'a str> {
    live.iter().copied().max_by_key(|id| {
        let mut h = Sha256::new();
        h.update(b"kycd/owner/v1\0");
        h.update(k.to_be_bytes());
        h.update(id.as_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        (u128::from_be_bytes(first), *id)
    })
}

/// What this instance currently holds, as the work loops see it.
#[derive(Clone, Debug)]
pub struct Roles {
    /// The lease of partition 0, which the projector works under while the
    /// log has one partition.
    pub projection: watch::Receiver<Option<Fence>>,
    /// Every partition this instance holds, by number.
    pub partitions: watch::Receiver<Vec<(u32, Fence)>>,
    pub timers: watch::Receiver<bool>,
    pub operator_lane: watch::Receiver<bool>,
    pub audit_anchor: watch::Receiver<bool>,
}

impl Roles {
    /// One process owns everything (the embedded store).
    pub fn single() -> Self {
        Self {
            projection: watch::channel(None).1,
            partitions: watch::channel(Vec::new()).1,
            timers: watch::channel(true).1,
            operator_lane: watch::channel(true).1,
            audit_anchor: watch::channel(true).1,
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
    /// The log's partition count.
    partitions: u32,
    projection: watch::Sender<Option<Fence>>,
    partitions_held: watch::Sender<Vec<(u32, Fence)>>,
    timers: watch::Sender<bool>,
    operator_lane: watch::Sender<bool>,
    audit_anchor: watch::Sender<bool>,
    held: std::sync::Mutex<Vec<Lease>>,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub backend: &'static str,
    pub this_instance: String,
    /// The log's partition count.
    pub partitions: u32,
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
    /// The partitions it holds (not expired), by number.
    pub partitions: Vec<u32>,
}

impl Membership {
    /// Register in the cluster of a log with `partitions` partitions;
    /// nothing is held until [`Membership::run`].
    pub async fn join(cluster: Cluster, partitions: u32) -> (Arc<Self>, Roles) {
        let (projection, projection_rx) = watch::channel(None);
        let (partitions_held, partitions_rx) = watch::channel(Vec::new());
        let (timers, timers_rx) = watch::channel(false);
        let (operator_lane, operator_rx) = watch::channel(false);
        let (audit_anchor, audit_anchor_rx) = watch::channel(false);
        (
            Arc::new(Self {
                cluster,
                partitions: partitions.max(1),
                projection,
                partitions_held,
                timers,
                operator_lane,
                audit_anchor,
                held: std::sync::Mutex::new(Vec::new()),
            }),
            Roles {
                projection: projection_rx,
                partitions: partitions_rx,
                timers: timers_rx,
                operator_lane: operator_rx,
                audit_anchor: audit_anchor_rx,
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
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> Result<(), ClusterError> {
        let (_, idle) = watch::channel(true);
        self.run_until_idle(stop, idle).await
    }

    /// [`Membership::run`], releasing the leases on `stop` only once
    /// `idle` is true (the projector finished its last batch, which then
    /// commits under its lease instead of being refused), or after
    /// [`RELEASE_WAIT`].
    pub async fn run_until_idle(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
        mut idle: watch::Receiver<bool>,
    ) -> Result<(), ClusterError> {
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
        let _ = tokio::time::timeout(RELEASE_WAIT, idle.wait_for(|i| *i)).await;
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        self.publish(&[]);
        for lease in &held {
            if let Err(e) = self.cluster.release(lease).await {
                tracing::warn!(error = %e, lease = %lease.name, "could not release a lease; it expires by itself");
            }
        }
        if let Err(e) = self.cluster.leave().await {
            tracing::warn!(error = %e, "could not leave the cluster; its heartbeat ages out");
        }
        Ok(())
    }

    async fn tick(&self) -> Result<(), ClusterError> {
        let before = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match self.keep(&before).await {
            Ok((now, handed)) => {
                for l in now.iter().filter(|l| !before.contains(l)) {
                    tracing::info!(lease = %l.name, epoch = l.epoch, "lease acquired");
                }
                for l in before
                    .iter()
                    .filter(|l| !now.iter().any(|n| n.name == l.name) && !handed.contains(&l.name))
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
    /// afterwards, and the partitions handed back for balance.
    async fn keep(&self, before: &[Lease]) -> Result<(Vec<Lease>, Vec<String>), ClusterError> {
        self.cluster.heartbeat().await?;
        let mut now = Vec::new();
        for name in TASKS {
            let lease = match before.iter().find(|l| l.name == name) {
                Some(l) if self.cluster.renew(l, LEASE_TTL).await? => Some(l.clone()),
                _ => self.cluster.acquire(name, LEASE_TTL).await?,
            };
            now.extend(lease);
        }
        let (partitions, handed) = self.keep_partitions(before).await?;
        now.extend(partitions);
        Ok((now, handed))
    }

    /// Renew the partitions held, hand back a few that want another live
    /// instance, and take the free ones that want this one (or that no one
    /// took within [`TAKEOVER_GRACE`]); those held, and those handed back.
    async fn keep_partitions(
        &self,
        before: &[Lease],
    ) -> Result<(Vec<Lease>, Vec<String>), ClusterError> {
        let me = self.cluster.id();
        let held: Vec<Lease> = before
            .iter()
            .filter(|l| partition_number(&l.name).is_some())
            .cloned()
            .collect();
        let renewed = self.cluster.renew_all(&held, LEASE_TTL).await?;
        let ttl_ms = LEASE_TTL.as_millis() as i64;
        let instances = self.cluster.instances().await?;
        let mut live: Vec<&str> = instances
            .iter()
            .filter(|i| i.heartbeat_age_ms < ttl_ms)
            .map(|i| i.id.as_str())
            .collect();
        if !live.contains(&me) {
            live.push(me);
        }
        let wants_me = |k: u32| desired_owner(k, &live) == Some(me);
        let mut kept = Vec::with_capacity(renewed.len());
        let mut handed = Vec::new();
        for lease in renewed {
            let k = partition_number(&lease.name).unwrap_or(0);
            if k >= self.partitions || (!wants_me(k) && handed.len() < MAX_RELEASES_PER_TICK) {
                self.cluster.release(&lease).await?;
                tracing::info!(lease = %lease.name, "partition handed over for balance");
                handed.push(lease.name.clone());
            } else {
                kept.push(lease);
            }
        }
        let states: HashMap<String, LeaseState> = self
            .cluster
            .lease_states(PARTITION_PREFIX)
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let grace_ms = TAKEOVER_GRACE.as_millis() as i64;
        for k in 0..self.partitions {
            let name = partition_lease(k);
            if kept.iter().any(|l| l.name == name) {
                continue;
            }
            let take = match states.get(&name) {
                None => wants_me(k),
                // This id's own (an earlier run's, or a renewal that failed).
                Some(s) if s.owner.as_deref() == Some(me) => true,
                Some(LeaseState {
                    expired_for_ms: Some(ms),
                    ..
                }) => wants_me(k) || *ms >= grace_ms,
                Some(_) => false,
            };
            if take {
                kept.extend(self.cluster.acquire(&name, LEASE_TTL).await?);
            }
        }
        Ok((kept, handed))
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
        let mut partitions: Vec<(u32, Fence)> = held
            .iter()
            .filter_map(|l| Some((partition_number(&l.name)?, l.fence(self.cluster.id()))))
            .collect();
        partitions.sort_by_key(|(k, _)| *k);
        self.partitions_held.send_if_modified(|p| {
            let changed = *p != partitions;
            *p = partitions;
            changed
        });
        let has = |name: &str| held.iter().any(|l| l.name == name);
        for (sender, name) in [
            (&self.timers, TIMERS),
            (&self.operator_lane, OPERATOR_LANE),
            (&self.audit_anchor, AUDIT_ANCHOR),
        ] {
            sender.send_if_modified(|t| std::mem::replace(t, has(name)) != has(name));
        }
    }

    /// The registry as `GET /api/v1/cluster` shows it.
    pub async fn view(&self, backend: &'static str) -> Result<ClusterView, ClusterError> {
        let instances = self.cluster.instances().await?;
        let leases = self.cluster.leases().await?;
        let ttl_ms = LEASE_TTL.as_millis() as i64;
        Ok(ClusterView {
            backend,
            this_instance: self.cluster.id().to_owned(),
            partitions: self.partitions,
            lease_ttl_ms: ttl_ms as u64,
            instances: instances
                .into_iter()
                .map(|i| {
                    let held: Vec<&LeaseInfo> = leases
                        .iter()
                        .filter(|l| !l.expired && l.owner.as_deref() == Some(i.id.as_str()))
                        .collect();
                    let mut partitions: Vec<u32> = held
                        .iter()
                        .filter_map(|l| partition_number(&l.name))
                        .collect();
                    partitions.sort_unstable();
                    InstanceView {
                        alive: i.heartbeat_age_ms < ttl_ms,
                        leases: held.iter().map(|l| l.name.clone()).collect(),
                        partitions,
                        instance: i,
                    }
                })
                .collect(),
            leases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_share_of_who_joins_or_leaves() {
        let three = ["kycd-a", "kycd-b", "kycd-c"];
        let two = ["kycd-a", "kycd-b"];
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for k in 0..64 {
            let with = desired_owner(k, &three).unwrap();
            *counts.entry(with).or_default() += 1;
            let without = desired_owner(k, &two).unwrap();
            // Leaving moves only what kycd-c held.
            if with != "kycd-c" {
                assert_eq!(with, without, "partition {k}");
            }
            // The order of the list does not matter.
            assert_eq!(
                desired_owner(k, &["kycd-c", "kycd-a", "kycd-b"]),
                Some(with)
            );
        }
        // Roughly even (64 partitions over three).
        assert!(
            counts.values().all(|&n| (10..=32).contains(&n)),
            "{counts:?}"
        );
        assert_eq!(desired_owner(0, &[]), None);
    }

    #[test]
    fn partition_leases_are_numbered() {
        assert_eq!(partition_lease(7), "partition/7");
        assert_eq!(partition_number("partition/7"), Some(7));
        assert_eq!(partition_number(PROJECTION), Some(0));
        assert_eq!(partition_number(TIMERS), None);
        assert_eq!(partition_number("partition/x"), None);
    }
}
