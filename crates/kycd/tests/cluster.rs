//! Failure test of a cluster: three `kycd serve` processes on one
//! PostgreSQL schema, the simulator as Didit sending its deliveries (with
//! duplicates, reordering and delays) through a round-robin front to all
//! three, an operator application receiving decision webhooks. Mid-stream
//! the instance that projects is SIGKILLed, PostgreSQL is restarted, and
//! the instance that took the projection over is SIGKILLed too. Afterwards:
//!
//! - every delivery that got a 2xx is in the log once, and every
//!   acknowledged session is projected with each of its events once;
//! - no event is decided twice, and every finished session has a decision;
//! - every write-back changed Didit once (the simulator's call log), and
//!   every operator webhook reached the application under one id, none
//!   lost (the application's log);
//! - the audit chain verifies;
//! - each takeover took less than the lease's time to live plus a margin.
//!
//! This binary holds this one test: restarting PostgreSQL would break any
//! other test running beside it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use kycd_sim::{Fate, Faults, SimConfig, WebhookVersion};
use serde_json::Value as Json;

mod support;
use support::acks::{self, Acked, API_TOKEN};
use support::{tail, Server};

const SECRET: &str = "cluster-test-webhook-secret";
const OPERATOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const INSTANCES: [&str; 3] = ["kycd-a", "kycd-b", "kycd-c"];
const USERS: usize = 180;
/// Slow enough that Didit's retry window (about five simulated minutes:
/// 7.5 s here) outlasts a PostgreSQL restart (about 3 s), fast enough that the run
/// takes about a minute.
const TIME_SCALE: f64 = 40.0;
/// The lease's time to live (10 s) and a tick (1 s), with a margin for a
/// loaded machine.
const TAKEOVER_BOUND: Duration = Duration::from_secs(25);
/// Deadlines only bound a hung test; none of them is expected to be reached.
const DEADLINE: Duration = Duration::from_secs(300);

/// Didit's deliveries go to the live instances in turn, as behind a load
/// balancer; an instance that does not answer is passed over.
struct Front {
    targets: Mutex<Vec<Option<String>>>,
    next: AtomicUsize,
    http: reqwest::Client,
    /// Didit's event id and kycd's acknowledgement, for each `accepted`.
    accepted: Mutex<Vec<(String, Acked)>>,
    /// kycd's answers by status.
    answers: Mutex<HashMap<u16, usize>>,
}

impl Front {
    fn retire(&self, base: &str) {
        for t in self.targets.lock().unwrap().iter_mut() {
            if t.as_deref() == Some(base) {
                *t = None;
            }
        }
    }

    async fn forward(&self, headers: HeaderMap, body: bytes::Bytes) -> (StatusCode, Vec<u8>) {
        let targets = self.targets.lock().unwrap().clone();
        for _ in 0..targets.len() {
            let i = self.next.fetch_add(1, Ordering::SeqCst) % targets.len();
            let Some(base) = &targets[i] else { continue };
            let mut req = self
                .http
                .post(format!("{base}/webhooks/didit"))
                .body(body.clone());
            for (name, value) in &headers {
                if name != "host" && name != "content-length" {
                    req = req.header(name.as_str(), value.as_bytes());
                }
            }
            // Not reached (killed, or not yet listening): the next one.
            let Ok(resp) = req.send().await else { continue };
            let status = resp.status().as_u16();
            let Ok(answer) = resp.bytes().await else {
                continue;
            };
            *self.answers.lock().unwrap().entry(status).or_default() += 1;
            let said: Json = serde_json::from_slice(&answer).unwrap_or(Json::Null);
            let sent: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
            if status == 200 && said["status"] == "accepted" {
                self.accepted.lock().unwrap().push((
                    sent["event_id"].as_str().unwrap_or_default().to_owned(),
                    Acked {
                        session_id: sent["session_id"].as_str().unwrap().to_owned(),
                        evt_id: said["id"].as_str().unwrap().to_owned(),
                    },
                ));
            }
            return (StatusCode::from_u16(status).unwrap(), answer.to_vec());
        }
        (
            StatusCode::SERVICE_UNAVAILABLE,
            b"no instance answered".to_vec(),
        )
    }
}

async fn serve_front(front: Arc<Front>) -> String {
    let app = axum::Router::new().route(
        "/webhooks/didit",
        axum::routing::post(move |headers: HeaderMap, body: bytes::Bytes| {
            let front = front.clone();
            async move { front.forward(headers, body).await }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/webhooks/didit")
}

/// The operator's application: every webhook it receives, by `webhook-id`.
type Received = Arc<Mutex<Vec<String>>>;

async fn operator_app(received: Received) -> String {
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap| {
            let received = received.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                received.lock().unwrap().push(id);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hooks")
}

struct Cluster {
    client: reqwest::Client,
    pool: sqlx::PgPool,
}

impl Cluster {
    async fn view(&self, base: &str) -> Json {
        acks::get(&self.client, format!("{base}/api/v1/cluster"))
            .await
            .1
    }

    /// The holder of a lease (not expired), as `base` sees it.
    async fn holder(&self, base: &str, lease: &str) -> Option<String> {
        let view = self.view(base).await;
        view["leases"].as_array()?.iter().find_map(|l| {
            (l["name"] == lease && l["expired"] == false)
                .then(|| l["owner"].as_str().map(str::to_owned))
                .flatten()
        })
    }

    /// Sessions with a decision; `None` while the database is away.
    async fn decided(&self) -> Option<i64> {
        sqlx::query_scalar("SELECT count(DISTINCT session_id) FROM decisions WHERE NOT shadow")
            .fetch_one(&self.pool)
            .await
            .ok()
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn wait_decided(&self, at_least: i64, what: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.decided().await.unwrap_or(0) >= at_least {
                return;
            }
            assert!(Instant::now() < deadline, "never {at_least} decided {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until `survivor` sees the projection held by another instance
    /// than `killed`; that instance and how long it took.
    async fn takeover(&self, survivor: &str, killed: &str, since: Instant) -> (String, Duration) {
        loop {
            if let Some(owner) = self
                .holder(survivor, "partition/0")
                .await
                .filter(|o| o != killed)
            {
                return (owner, since.elapsed());
            }
            assert!(
                since.elapsed() < DEADLINE,
                "no instance took the projection over from {killed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_survive_two_sigkills_and_a_postgres_restart_with_every_effect_once() {
    let Some(url) = kycd_log::postgres::testing::url_or_skip("cluster failures") else {
        return;
    };
    let restart = std::env::var("KYCD_TEST_POSTGRES_RESTART").ok();
    if restart.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must restart PostgreSQL in the cluster test: set KYCD_TEST_POSTGRES_RESTART \
             to a command that restarts the server at KYCD_TEST_POSTGRES_URL"
        );
        eprintln!(
            "notice: KYCD_TEST_POSTGRES_RESTART is unset: the cluster test runs without \
             restarting PostgreSQL"
        );
    }
    let schemas = kycd_log::postgres::testing::Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let db_url = schemas.url_of(&schema);

    let sim = kycd_sim::start(SimConfig {
        webhook_secret: SECRET.into(),
        seed: 29,
        time_scale: TIME_SCALE,
        faults: Faults::demo_default(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let received = Received::default();
    let hooks = operator_app(received.clone()).await;

    let root = tempfile::TempDir::new().unwrap();
    let key_file = root.path().join("audit.key");
    let mut envs = vec![
        ("KYCD_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("KYCD_API_TOKEN", API_TOKEN.to_owned()),
        ("KYCD_DIDIT_API_KEY", sim.api_key().to_owned()),
        ("KYCD_DIDIT_BASE_URL", sim.base_url()),
        ("KYCD_ACT_ON_SANDBOX", "true".to_owned()),
        ("KYCD_RETRY_TIME_SCALE", TIME_SCALE.to_string()),
        // No reconciliation: what is decided is what was delivered.
        ("KYCD_RECONCILE_INTERVAL_SECS", "0".to_owned()),
        ("KYCD_STEP_UP_EXPIRY_SECS", (4 * 3600).to_string()),
        ("KYCD_OPERATOR_WEBHOOK_URL", hooks),
        ("KYCD_OPERATOR_WEBHOOK_SECRETS", OPERATOR_SECRET.to_owned()),
        ("KYCD_OPERATOR_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
        ("KYCD_DATABASE_URL", db_url.clone()),
        // One key for the cluster: every instance appends to one chain.
        ("KYCD_AUDIT_KEY_FILE", key_file.display().to_string()),
    ];
    envs.extend(support::step_up_workflows(&sim).await);
    let mut servers: Vec<(&str, Server)> = INSTANCES
        .iter()
        .map(|name| {
            let data_dir = root.path().join(name);
            std::fs::create_dir_all(&data_dir).unwrap();
            let mut envs = envs.clone();
            envs.push(("KYCD_INSTANCE_ID", (*name).to_owned()));
            let log = root.path().join(format!("{name}.log"));
            (*name, Server::start(&data_dir, &log, &envs))
        })
        .collect();
    let base_of = |servers: &[(&str, Server)], name: &str| {
        servers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.base.clone())
            .unwrap()
    };
    let logs = |root: &tempfile::TempDir| {
        INSTANCES
            .iter()
            .map(|n| format!("--- {n}:\n{}", tail(&root.path().join(format!("{n}.log")))))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let cluster = Cluster {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        pool: sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&db_url)
            .await
            .unwrap(),
    };

    // All three join and every lease finds a holder.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = cluster.view(&servers[0].1.base).await;
        let alive = view["instances"]
            .as_array()
            .map_or(0, |i| i.iter().filter(|i| i["alive"] == true).count());
        let mut held = true;
        for lease in ["partition/0", "timers", "lane:operator.webhook"] {
            held &= cluster.holder(&servers[0].1.base, lease).await.is_some();
        }
        if alive == 3 && held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never formed: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let front = Arc::new(Front {
        targets: Mutex::new(servers.iter().map(|(_, s)| Some(s.base.clone())).collect()),
        next: AtomicUsize::new(0),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(4))
            .build()
            .unwrap(),
        accepted: Mutex::new(Vec::new()),
        answers: Mutex::new(HashMap::new()),
    });
    let front_url = serve_front(front.clone()).await;
    sim.add_destination(&front_url, WebhookVersion::V3).unwrap();
    let run = sim.run(USERS);
    let started = Instant::now();

    // First failure: SIGKILL the projecting instance.
    cluster
        .wait_decided(USERS as i64 / 6, "before the first kill")
        .await;
    let first = cluster
        .holder(&servers[0].1.base, "partition/0")
        .await
        .unwrap();
    let index = servers.iter().position(|(n, _)| *n == first).unwrap();
    let (_, mut killed) = servers.remove(index);
    front.retire(&killed.base);
    killed.kill();
    let killed_at = Instant::now();
    let (second, took_1) = cluster
        .takeover(&servers[0].1.base, &first, killed_at)
        .await;
    eprintln!("partition/0: {first} SIGKILLed, {second} took over after {took_1:?}");

    // Second failure: restart PostgreSQL under the two survivors.
    let decided_before_restart = cluster.decided().await.unwrap();
    if let Some(command) = &restart {
        let t = Instant::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .status()
            .unwrap();
        assert!(status.success(), "`{command}` failed: {status}");
        // The cluster decides again once the projection found its lease.
        cluster
            .wait_decided(decided_before_restart + 1, "after the restart")
            .await;
        eprintln!(
            "PostgreSQL restarted; decisions resumed {:?} after the restart began",
            t.elapsed()
        );
    }

    // Third failure: SIGKILL the instance that took the projection over.
    let decided_now = cluster.decided().await.unwrap_or(0);
    cluster
        .wait_decided(
            (decided_now + 10).min(USERS as i64 / 2),
            "before the second kill",
        )
        .await;
    let second = cluster
        .holder(&servers[0].1.base, "partition/0")
        .await
        .unwrap();
    let index = servers.iter().position(|(n, _)| *n == second).unwrap();
    let (_, mut killed) = servers.remove(index);
    front.retire(&killed.base);
    killed.kill();
    let killed_at = Instant::now();
    let last = servers[0].0;
    let survivor = base_of(&servers, last);
    let (third, took_2) = cluster.takeover(&survivor, &second, killed_at).await;
    eprintln!("partition/0: {second} SIGKILLed, {third} took over after {took_2:?}");
    assert_eq!(third, last);
    for took in [took_1, took_2] {
        assert!(took < TAKEOVER_BOUND, "a takeover took {took:?}");
    }
    let remaining_at_second_kill = run.remaining();

    // Didit finishes its customers and deliveries; the survivor finishes
    // the work (the killed instances' outbox claims expire first).
    run.finished(DEADLINE).await.unwrap();
    sim.wait_settled(DEADLINE).await.unwrap();
    let drain = Instant::now();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let owed = cluster
            .scalar("SELECT count(*) FROM actions WHERE state IN ('pending', 'running')")
            .await;
        let ready = acks::get(&cluster.client, format!("{survivor}/readyz"))
            .await
            .1;
        let lag = ready
            .pointer("/checks/projector_lag")
            .and_then(Json::as_u64)
            .unwrap_or(u64::MAX);
        if owed == 0 && lag == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{owed} actions owed, projector lag {lag}:\n{}",
            logs(&root)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the survivor finished the work {:?} after Didit settled",
        drain.elapsed()
    );
    let answers = front.answers.lock().unwrap().clone();
    eprintln!(
        "front: answers by status {answers:?}; {remaining_at_second_kill} customers were \
         still under way at the second kill"
    );

    // Every delivery Didit counts as delivered was accepted under one
    // event id, and is in the log and projected once.
    let accepted = front.accepted.lock().unwrap().clone();
    let mut ids_of: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (didit_id, ack) in &accepted {
        ids_of.entry(didit_id).or_default().insert(&ack.evt_id);
    }
    for (didit_id, ids) in &ids_of {
        assert_eq!(
            ids.len(),
            1,
            "Didit event {didit_id} was accepted as {ids:?}"
        );
    }
    let delivered: Vec<_> = sim
        .deliveries()
        .into_iter()
        .filter(|d| d.fate == Fate::Delivered)
        .collect();
    assert!(delivered.len() >= USERS, "{} delivered", delivered.len());
    for d in &delivered {
        assert!(
            ids_of.contains_key(d.event_id.as_str()),
            "Didit's delivery {} got a 2xx but was never accepted",
            d.event_id
        );
    }
    let acked: Vec<Acked> = accepted.into_iter().map(|(_, a)| a).collect();
    let base = Arc::new(survivor.clone());
    acks::every_ack_is_in_the_log(&cluster.client, &base, &acked).await;
    acks::every_acked_session_holds_its_events_once(&cluster.client, &base, &acked, DEADLINE).await;

    // No event decided twice; every finished session decided.
    let twice = cluster
        .scalar(
            "SELECT count(*) FROM (SELECT 1 FROM decisions WHERE NOT shadow
               GROUP BY session_id, event_offset HAVING count(*) > 1) d",
        )
        .await;
    assert_eq!(twice, 0, "an event decided twice");
    let undecided = cluster
        .scalar(
            "SELECT count(*) FROM sessions s
             WHERE s.status IN ('Approved', 'Declined', 'In Review')
               AND NOT EXISTS (SELECT 1 FROM decisions d
                               WHERE d.session_id = s.session_id AND NOT d.shadow)",
        )
        .await;
    assert_eq!(undecided, 0, "finished sessions without a decision");
    let decided = cluster.decided().await.unwrap();
    assert!(decided >= USERS as i64 / 2, "{decided} sessions decided");

    // Every write-back changed Didit once.
    assert_eq!(
        cluster
            .scalar("SELECT count(*) FROM actions WHERE state = 'dead'")
            .await,
        0,
        "an action was given up"
    );
    let calls = sim.calls();
    let changed = support::changes(&calls);
    assert!(!changed.is_empty(), "nothing was written back to Didit");
    for (key, n) in &changed {
        assert_eq!(*n, 1, "{key:?} happened {n} times at Didit");
    }
    let written_back = cluster
        .scalar("SELECT count(*) FROM actions WHERE kind LIKE 'didit.%' AND state = 'done'")
        .await;

    // Every operator webhook reached the application under one id, and
    // none is missing.
    let done_hooks: HashSet<String> = sqlx::query_scalar(
        "SELECT payload::jsonb ->> 'message_id' FROM actions
         WHERE kind = 'operator.webhook' AND state = 'done'",
    )
    .fetch_all(&cluster.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let received = received.lock().unwrap().clone();
    let distinct: HashSet<String> = received.iter().cloned().collect();
    assert!(!done_hooks.is_empty(), "no operator webhook was sent");
    let lost: Vec<_> = done_hooks.difference(&distinct).take(5).collect();
    let unknown: Vec<_> = distinct.difference(&done_hooks).take(5).collect();
    assert!(
        lost.is_empty() && unknown.is_empty(),
        "webhooks done but never received: {lost:?}; received but not done: {unknown:?}"
    );
    let (hooks, ids) = (
        cluster
            .scalar("SELECT count(*) FROM actions WHERE kind = 'operator.webhook'")
            .await,
        cluster
            .scalar(
                "SELECT count(DISTINCT payload::jsonb ->> 'message_id') FROM actions
                 WHERE kind = 'operator.webhook'",
            )
            .await,
    );
    assert_eq!(hooks, ids, "two webhooks enqueued under one message id");

    // The audit chain verifies.
    let store = kycd_log::postgres::store::PgStore::open(
        kycd_log::postgres::Database::connect(
            &db_url,
            &kycd_log::postgres::PoolSettings::default(),
        )
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    store.set_audit_key(kycd_log::audit::AuditKey::load(&key_file).unwrap());
    let verified = kycd_log::audit::Audit::verify_audit(&store).await.unwrap();
    assert!(verified.problem.is_none(), "{:?}", verified.problem);
    assert!(verified.records > 0);
    // And so does every anchor the instances appended while the
    // `audit-anchor` lease moved between them.
    let audited = std::process::Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(["audit", "verify"])
        .env_remove("KYCD_CONFIG")
        .env("KYCD_DATABASE_URL", &db_url)
        .env("KYCD_AUDIT_KEY_FILE", &key_file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&audited.stdout);
    assert!(
        audited.status.success() && said.contains("anchored in the event log up to record"),
        "{said}{}",
        String::from_utf8_lossy(&audited.stderr)
    );
    eprintln!(
        "{} deliveries acknowledged, {decided} sessions decided, {written_back} write-backs \
         ({} changes at Didit), {} operator webhooks ({} receipts), {} audit records",
        acked.len(),
        changed.len(),
        done_hooks.len(),
        received.len(),
        verified.records
    );
    eprintln!("the run took {:?}", started.elapsed());
    drop(servers);
    cluster.pool.close().await;
    sim.shutdown().await;
    schemas.drop_all().await;
}
