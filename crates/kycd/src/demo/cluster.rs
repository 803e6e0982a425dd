//! `kycd demo --cluster`: the demo on PostgreSQL with three `kycd serve`
//! instances in this process (`kycd-1` to `kycd-3`) on one schema, the
//! simulated Didit delivering to a round-robin front before them, as
//! behind a load balancer. Half-way through, the instance that holds the
//! projection's lease (`partition/0`) is stopped and another takes it over;
//! the summary adds which instance took the webhooks and decided what
//! (each decision's `decided_by`) and who held the leases when.
//!
//! The database is the one `KYCD_DATABASE_URL` names, in a new schema
//! dropped at the end, or the schema its `search_path` names (which must
//! not hold kycd's tables yet), left in place.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::http::{HeaderMap, StatusCode};
use didit::signature::Secret;
use kycd_log::postgres::cluster::LeaseInfo;
use kycd_log::postgres::schemas;
use kycd_log::store::Store;
use kycd_server::cluster::PROJECTION;
use kycd_server::{App, Running, Settings};
use sqlx::PgPool;
use tokio::sync::watch;

/// How many instances the demo runs.
pub const INSTANCES: usize = 3;

/// How long a lease may take to find a holder (its time to live and a few
/// ticks); only a broken cluster waits this long.
const LEASE_DEADLINE: Duration = Duration::from_secs(60);

/// `KYCD_DATABASE_URL`, checked: the cluster demo needs PostgreSQL.
pub fn database_url(value: Option<String>) -> anyhow::Result<String> {
    match value {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(url),
        // The value is never shown: it may hold a password.
        Some(_) => bail!(
            "kycd demo --cluster runs on PostgreSQL: KYCD_DATABASE_URL must be a postgres:// URL (postgres://user:password@host:port/database)"
        ),
        None => bail!(
            "kycd demo --cluster runs on PostgreSQL: set KYCD_DATABASE_URL to a postgres:// URL (postgres://user:password@host:port/database)"
        ),
    }
}

/// The schema the instances share.
struct Schema {
    admin: PgPool,
    /// The URL every instance connects with.
    url: String,
    /// `Some(name)` when the demo made it (and drops it at the end).
    made: Option<String>,
}

impl Schema {
    async fn open(url: &str) -> anyhow::Result<Self> {
        if schemas::names_a_schema(url) {
            let admin = schemas::admin(url)
                .await
                .context("connect to the database (KYCD_DATABASE_URL)")?;
            if schemas::holds_kycd(&admin).await? {
                bail!(
                    "the schema KYCD_DATABASE_URL's search_path names already holds a kycd database; kycd demo --cluster needs an empty one (without a search_path it makes its own)"
                );
            }
            return Ok(Self {
                admin,
                url: url.to_owned(),
                made: None,
            });
        }
        let admin = schemas::admin(url)
            .await
            .context("connect to the database (KYCD_DATABASE_URL)")?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!("kycd_demo_{stamp}_{}", std::process::id());
        schemas::create(&admin, &name)
            .await
            .context("create the demo's schema")?;
        Ok(Self {
            admin,
            url: schemas::url_with_search_path(url, &name),
            made: Some(name),
        })
    }

    fn describe(&self) -> String {
        match &self.made {
            Some(name) => format!("PostgreSQL schema {name}"),
            None => "the PostgreSQL schema KYCD_DATABASE_URL names".to_owned(),
        }
    }

    /// Drop the schema if the demo made it.
    async fn close(self) -> anyhow::Result<()> {
        if let Some(name) = &self.made {
            schemas::drop_schema(&self.admin, name)
                .await
                .with_context(|| format!("drop the demo's schema {name}"))?;
        }
        self.admin.close().await;
        Ok(())
    }
}

/// Didit's deliveries go to the running instances in turn; one that does
/// not answer is passed over.
struct Front {
    targets: Mutex<Vec<Option<String>>>,
    next: AtomicUsize,
    http: reqwest::Client,
    /// Deliveries each instance acknowledged (2xx).
    acknowledged: Vec<AtomicUsize>,
}

impl Front {
    fn retire(&self, i: usize) {
        if let Some(t) = self
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            *t = None;
        }
    }

    async fn forward(&self, headers: HeaderMap, body: bytes::Bytes) -> (StatusCode, Vec<u8>) {
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for _ in 0..targets.len() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % targets.len();
            let Some(url) = &targets[i] else { continue };
            let mut req = self.http.post(url).body(body.clone());
            for (name, value) in &headers {
                if name != "host" && name != "content-length" {
                    req = req.header(name.as_str(), value.as_bytes());
                }
            }
            let Ok(resp) = req.send().await else { continue };
            let status = resp.status();
            let Ok(answer) = resp.bytes().await else {
                continue;
            };
            if status.is_success() {
                self.acknowledged[i].fetch_add(1, Ordering::Relaxed);
            }
            let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            return (status, answer.to_vec());
        }
        (
            StatusCode::SERVICE_UNAVAILABLE,
            b"no instance answered".to_vec(),
        )
    }
}

async fn serve_front(front: Arc<Front>) -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new().route(
        "/webhooks/didit",
        axum::routing::post(move |headers: HeaderMap, body: bytes::Bytes| {
            let front = front.clone();
            async move { front.forward(headers, body).await }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the front")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the demo's front stopped");
        }
    });
    Ok(addr)
}

/// The highest of the instances' applied offsets: whichever projects,
/// everything up to it is committed.
fn furthest_applied<'a>(apps: impl Iterator<Item = &'a Arc<App>>) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0);
    let tx = Arc::new(tx);
    for app in apps {
        let (tx, mut applied) = (tx.clone(), app.applied.clone());
        tokio::spawn(async move {
            loop {
                let offset = *applied.borrow_and_update();
                tx.send_if_modified(|o| std::mem::replace(o, offset.max(*o)) < offset);
                // Ends with the instance's projector.
                if applied.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}

struct Instance {
    id: String,
    addr: SocketAddr,
    app: Arc<App>,
    /// `None` once stopped.
    running: Option<Running>,
}

/// When a lease was first seen with a holder and epoch.
struct Holding {
    lease: String,
    owner: String,
    epoch: i64,
    since: Duration,
}

/// The half-way stop of the projecting instance.
struct Takeover {
    from: String,
    to: String,
    /// Customers through verification and sessions decided by then.
    after: (usize, usize),
    at: Duration,
    took: Duration,
    epochs: (i64, i64),
}

/// Three instances on one schema and the front before them.
pub struct Cluster {
    instances: Vec<Instance>,
    schema: Option<Schema>,
    front: Arc<Front>,
    front_addr: SocketAddr,
    started: Instant,
    holdings: Vec<Holding>,
    takeover: Option<Takeover>,
    applied: watch::Receiver<u64>,
}

impl Cluster {
    /// Start the instances on `database_url` with `settings` (the demo's),
    /// one after another, and wait until the projection has a holder.
    pub async fn start(
        settings: &Settings,
        database_url: &str,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let schema = Schema::open(database_url).await?;
        let mut instances = Vec::new();
        for n in 1..=INSTANCES {
            let id = format!("kycd-{n}");
            let mut s = settings.clone();
            s.database_url = Some(Secret::new(schema.url.clone()));
            s.instance_id = Some(id.clone());
            // Every instance must share the audit key.
            s.audit_key_file = Some(settings.data_dir.join("audit.key"));
            s.database_max_connections = 8;
            match kycd_server::start_with(s, Arc::new(kycd_core::SystemClock), crate::startup())
                .await
            {
                Ok(running) => instances.push(Instance {
                    id,
                    addr: running.addr,
                    app: running.app.clone(),
                    running: Some(running),
                }),
                Err(e) => {
                    for i in instances {
                        if let Some(r) = i.running {
                            let _ = r.shutdown().await;
                        }
                    }
                    let _ = schema.close().await;
                    return Err(e.context(format!("start {id}")));
                }
            }
        }
        let front = Arc::new(Front {
            targets: Mutex::new(
                instances
                    .iter()
                    .map(|i| Some(format!("http://{}/webhooks/didit", i.addr)))
                    .collect(),
            ),
            next: AtomicUsize::new(0),
            http: reqwest::Client::new(),
            acknowledged: (0..INSTANCES).map(|_| AtomicUsize::new(0)).collect(),
        });
        let front_addr = serve_front(front.clone()).await?;
        let applied = furthest_applied(instances.iter().map(|i| &i.app));
        let mut cluster = Self {
            instances,
            schema: Some(schema),
            front,
            front_addr,
            started,
            holdings: Vec::new(),
            takeover: None,
            applied,
        };
        cluster.holder(PROJECTION, None).await?;
        Ok(cluster)
    }

    /// The instance the demo reads through: the first one running.
    pub fn app(&self) -> &Arc<App> {
        self.instances
            .iter()
            .find(|i| i.running.is_some())
            .map_or(&self.instances[0].app, |i| &i.app)
    }

    /// The furthest offset any instance's projector has committed.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Every instance's, stopped ones too.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<App>> {
        self.instances.iter().map(|i| &i.app)
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhooks/didit", self.front_addr)
    }

    /// The first line's account of where kycd runs.
    pub fn describe(&self) -> String {
        let at: Vec<String> = self
            .instances
            .iter()
            .map(|i| format!("{} at http://{}", i.id, i.addr))
            .collect();
        format!(
            "{} behind a round-robin front at http://{} ({})",
            at.join(", "),
            self.front_addr,
            self.schema
                .as_ref()
                .map_or_else(String::new, Schema::describe)
        )
    }

    /// The running instances' addresses, for `--keep-running`.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.instances
            .iter()
            .filter(|i| i.running.is_some())
            .map(|i| (i.id.clone(), i.addr))
            .collect()
    }

    pub fn describe_database(&self) -> String {
        match self.schema.as_ref().map(|s| &s.made) {
            Some(Some(name)) => format!("PostgreSQL schema {name} (dropped on exit)"),
            _ => "the PostgreSQL schema KYCD_DATABASE_URL names (kept)".to_owned(),
        }
    }

    /// The leases as the first running instance sees them, noting each
    /// new holder.
    async fn leases(&mut self) -> anyhow::Result<Vec<LeaseInfo>> {
        let membership = self
            .app()
            .membership
            .clone()
            .context("a cluster instance has a membership")?;
        let view = membership.view("postgres").await?;
        let at = self.started.elapsed();
        for l in &view.leases {
            let Some(owner) = l.owner.as_ref().filter(|_| !l.expired) else {
                continue;
            };
            let known = self
                .holdings
                .iter()
                .rev()
                .find(|h| h.lease == l.name)
                .is_some_and(|h| h.owner == *owner && h.epoch == l.epoch);
            if !known {
                self.holdings.push(Holding {
                    lease: l.name.clone(),
                    owner: owner.clone(),
                    epoch: l.epoch,
                    since: at,
                });
            }
        }
        Ok(view.leases)
    }

    /// Wait until `lease` has a holder other than `not`: its id and epoch.
    async fn holder(&mut self, lease: &str, not: Option<&str>) -> anyhow::Result<(String, i64)> {
        let deadline = Instant::now() + LEASE_DEADLINE;
        loop {
            let held = self.leases().await?.into_iter().find_map(|l| {
                let owner = l.owner.filter(|_| l.name == lease && !l.expired)?;
                (Some(owner.as_str()) != not).then_some((owner, l.epoch))
            });
            if let Some(h) = held {
                return Ok(h);
            }
            if Instant::now() >= deadline {
                bail!("no instance took {lease} within {LEASE_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Called with each progress tick (customers through verification,
    /// sessions decided): notes the lease holders, and stops the projecting
    /// instance half-way, once it has decided as many sessions as half the
    /// customers. (A small run may get there only after every customer is
    /// through; the demo then calls [`Cluster::take_over_once`] itself.)
    pub async fn progress(
        &mut self,
        finished: usize,
        decided: usize,
        users: usize,
    ) -> anyhow::Result<()> {
        self.leases().await?;
        if decided * 2 >= users {
            self.take_over_once(finished, decided).await?;
        }
        Ok(())
    }

    /// Stop the instance that holds the projection and wait until another
    /// holds it, unless that happened already.
    pub async fn take_over_once(&mut self, finished: usize, decided: usize) -> anyhow::Result<()> {
        if self.takeover.is_some() {
            return Ok(());
        }
        let (from, from_epoch) = self.holder(PROJECTION, None).await?;
        let i = self
            .instances
            .iter()
            .position(|i| i.id == from)
            .context("the projection's holder is one of the demo's instances")?;
        // No more deliveries to it; then a graceful stop, which hands its
        // leases back.
        self.front.retire(i);
        let at = self.started.elapsed();
        let stopping = Instant::now();
        if let Some(running) = self.instances[i].running.take() {
            running
                .shutdown()
                .await
                .with_context(|| format!("stop {from}"))?;
        }
        let (to, to_epoch) = self.holder(PROJECTION, Some(&from)).await?;
        self.takeover = Some(Takeover {
            from,
            to,
            after: (finished, decided),
            at,
            took: stopping.elapsed(),
            epochs: (from_epoch, to_epoch),
        });
        Ok(())
    }

    /// Whether the takeover happened.
    pub fn took_over(&self) -> bool {
        self.takeover.is_some()
    }

    /// The per-instance summary: deliveries acknowledged, decisions made
    /// (by `decided_by`), lease holders and the takeover.
    pub async fn print(&mut self, store: &dyn Store, users: usize) -> anyhow::Result<()> {
        self.leases().await?;
        let decisions = super::decisions_after(store, 0).await?;
        #[derive(Default)]
        struct Made {
            decisions: usize,
            sessions: std::collections::HashSet<String>,
            outcomes: BTreeMap<String, usize>,
        }
        let mut by: BTreeMap<Option<String>, Made> = BTreeMap::new();
        for d in decisions {
            let m = by.entry(d.decided_by).or_default();
            m.decisions += 1;
            *m.outcomes.entry(d.outcome).or_default() += 1;
            m.sessions.insert(d.session_id);
        }
        let outcomes = &super::COLUMNS[..super::COLUMNS.len() - 1];
        let mut out = format!(
            "\nInstances ({INSTANCES} kycd serve on one PostgreSQL schema; Didit's deliveries round-robin through a front)\n"
        );
        out.push_str(&format!(
            "  {:<12} {:>8} {:>9} {:>8}",
            "instance", "webhooks", "decisions", "sessions"
        ));
        for o in outcomes {
            out.push_str(&format!(" {o:>8}"));
        }
        out.push('\n');
        let mut rows: Vec<(String, Option<usize>, Option<String>)> = self
            .instances
            .iter()
            .enumerate()
            .map(|(n, i)| {
                (
                    i.id.clone(),
                    Some(self.front.acknowledged[n].load(Ordering::Relaxed)),
                    Some(i.id.clone()),
                )
            })
            .collect();
        if by.contains_key(&None) {
            rows.push(("(no instance)".to_owned(), None, None));
        }
        for (name, webhooks, key) in rows {
            let made = by.get(&key);
            out.push_str(&format!(
                "  {name:<12} {:>8} {:>9} {:>8}",
                webhooks.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                made.map_or(0, |m| m.decisions),
                made.map_or(0, |m| m.sessions.len()),
            ));
            for o in outcomes {
                let n = made.and_then(|m| m.outcomes.get(*o)).copied().unwrap_or(0);
                out.push_str(&format!(" {n:>8}"));
            }
            out.push('\n');
        }
        out.push_str("  (decisions by the instance that committed them, each decision's decided_by; a session re-decided by another instance counts for both)\n");

        out.push_str("\nLeases (each holder in turn, with when it was first seen holding)\n");
        let mut names: Vec<&str> = self.holdings.iter().map(|h| h.lease.as_str()).collect();
        // The partitions first.
        names.sort_unstable_by_key(|n| (!n.starts_with("partition/"), *n));
        names.dedup();
        for name in names {
            let turns: Vec<String> = self
                .holdings
                .iter()
                .filter(|h| h.lease == name)
                .map(|h| {
                    format!(
                        "{} (epoch {}) from {:.1} s",
                        h.owner,
                        h.epoch,
                        h.since.as_secs_f64()
                    )
                })
                .collect();
            out.push_str(&format!("  {name:<24} {}\n", turns.join(", then ")));
        }
        match &self.takeover {
            Some(t) => out.push_str(&format!(
                "\nTakeover: {} held {PROJECTION} (epoch {}) and was stopped {:.1} s into the run ({} of {users} customers through verification, {} sessions decided); {} held {PROJECTION} (epoch {}) {:.1} s later and decided from there.\n",
                t.from,
                t.epochs.0,
                t.at.as_secs_f64(),
                t.after.0,
                t.after.1,
                t.to,
                t.epochs.1,
                t.took.as_secs_f64()
            )),
            None => out.push_str("\nNo takeover: the run ended before it.\n"),
        }
        print!("{out}");
        Ok(())
    }

    /// Stop the running instances, close their pools and drop the schema
    /// if the demo made it.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for i in &mut self.instances {
            if let Some(r) = i.running.take() {
                if let Err(e) = r.shutdown().await {
                    result = Err(e);
                }
            }
        }
        for i in &self.instances {
            if let kycd_server::storage::Backend::Postgres { db, .. } = &i.app.backend {
                db.close().await;
            }
        }
        if let Some(schema) = self.schema.take() {
            schema.close().await?;
        }
        result
    }
}
