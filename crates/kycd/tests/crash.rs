//! Crash test: the real binary is SIGKILLed while deliveries are in flight,
//! restarted on the same data directory, and must still hold every delivery
//! it acknowledged, projected exactly once.
//!
//! The invariant under test is "a 2xx goes back to the provider only after
//! the event is durable": whatever got a `200 accepted` before the kill must
//! be readable after the restart, its session must list it in its history
//! exactly once, and a resend must be recognised as a duplicate with the
//! same event id (so the dedupe state survived too). Deliveries that got no
//! answer may or may not be in the log; that is fine, Didit would retry them.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use didit::canonical::Value;
use didit::signature::{sign, Secret};
use rand::Rng;
use serde_json::Value as Json;

const SECRET: &str = "crash-test-secret-tno2NTeRC1ZK3sBOYlBJDyEzBVENl3pQ";
const TOKEN: &str = "crash-test-api-token";

mod support;
use support::Server;

fn envs() -> Vec<(&'static str, String)> {
    vec![
        ("KYCD_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("KYCD_API_TOKEN", TOKEN.to_owned()),
    ]
}

/// Sessions receiving one delivery, and sessions receiving two statuses in
/// order (`In Progress`, then `Approved` once the first was acknowledged).
const SINGLE_SESSIONS: usize = 2900;
const PAIR_SESSIONS: usize = 50;
const CONNECTIONS: usize = 32;
/// The server is killed once this many deliveries have been acknowledged.
const KILL_AFTER_ACKS: usize = 1000;

/// Deadlines only bound a hung test; none of them is expected to be reached.
const PROJECTION_DEADLINE: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

const IN_PROGRESS: &str = r#"{"application_id":"0b6f3c2e-7d41-4a55-9a0e-3f1c2d4e5a6b","created_at":1774969994,"environment":"live","event_id":"5f0c1d2e-3a4b-4c5d-8e9f-a0b1c2d3e4f5","session_id":"c3d4e5f6-a7b8-4c9d-8e0f-112233445566","status":"In Progress","timestamp":1774970000,"vendor_data":"user-1001","webhook_type":"status.updated","workflow_id":"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d","workflow_version":2}"#;

const APPROVED: &str = r#"{"application_id":"0b6f3c2e-7d41-4a55-9a0e-3f1c2d4e5a6b","created_at":1774969994,"decision":{"aml_screenings":[{"hits":[],"node_id":"feature_aml_1","score":0,"status":"Approved","total_hits":0,"warnings":[]}],"created_at":"2026-03-31T15:13:14.123456Z","database_validations":null,"email_verifications":null,"environment":"live","face_matches":[{"node_id":"feature_face_match_1","score":91.3,"status":"Approved","warnings":[]}],"features":["ID_VERIFICATION","LIVENESS","FACE_MATCH","AML","IP_ANALYSIS"],"id_verifications":[{"age":37,"date_of_birth":"1988-04-02","document_number":"X1234567","document_type":"Passport","expiration_date":"2031-01-09","first_name":"J\u00fcrgen","full_name":"J\u00fcrgen Gro\u00df","gender":"M","issuing_state":"DEU","last_name":"Gro\u00df","mrz":"P<D<<GROSS<<JUERGEN<<<<<<<<<<<<<<<<<<<<<<<<<<","nationality":"DEU","node_id":"feature_ocr_1","status":"Approved","warnings":[]}],"ip_analyses":[{"ip_address":"85.123.45.67","ip_country_code":"DE","is_data_center":false,"is_vpn_or_tor":false,"latitude":52.52,"longitude":13.405,"node_id":"feature_ip_analysis_1","status":"Approved","warnings":[]}],"liveness_checks":[{"age_estimation":36.4,"face_quality":88,"matches":[],"method":"PASSIVE","node_id":"feature_liveness_1","score":97.25,"status":"Approved","warnings":[]}],"metadata":null,"nfc_verifications":null,"phone_verifications":null,"poa_verifications":null,"questionnaire_responses":null,"reviews":[],"session_id":"c3d4e5f6-a7b8-4c9d-8e0f-112233445566","session_number":4211,"status":"Approved","vendor_data":"user-1001"},"environment":"live","event_id":"5f0c1d2e-3a4b-4c5d-8e9f-a0b1c2d3e4f5","metadata":{"plan":"pro"},"session_id":"c3d4e5f6-a7b8-4c9d-8e0f-112233445566","status":"Approved","timestamp":1774970000,"vendor_data":"user-1001","webhook_type":"status.updated","workflow_id":"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d","workflow_version":2}"#;

/// One signed delivery, ready to send.
#[derive(Clone)]
struct Delivery {
    session_id: String,
    body: bytes::Bytes,
    headers: Vec<(&'static str, String)>,
}

/// What the server acknowledged: the delivery and the event id it got.
#[derive(Clone)]
struct Ack {
    delivery: Delivery,
    evt_id: String,
}

fn uuid_v4(rng: &mut impl Rng) -> String {
    let b: [u8; 16] = rng.gen();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (b[8] & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

fn string(s: &str) -> Value<'static> {
    Value::String(s.to_owned().into())
}

fn delivery(template: &str, session_id: &str, vendor_data: &str, now: u64) -> Delivery {
    let mut rng = rand::thread_rng();
    let mut payload = Value::parse(template.as_bytes()).expect("template parses");
    payload.set("event_id", string(&uuid_v4(&mut rng)));
    payload.set("session_id", string(session_id));
    payload.set("vendor_data", string(vendor_data));
    payload.set("timestamp", Value::Number(now.to_string().into()));
    if let Value::Object(members) = &mut payload {
        if let Some((_, decision)) = members.iter_mut().find(|(k, _)| k == "decision") {
            decision.set("session_id", string(session_id));
            decision.set("vendor_data", string(vendor_data));
            // Distinct people: sessions sharing a document or an IP address
            // are linked by the engine, which is not what this test is about.
            if let Value::Object(members) = decision {
                for (key, value) in members.iter_mut() {
                    let Value::Array(items) = value else { continue };
                    let Some(item) = items.first_mut() else {
                        continue;
                    };
                    match key.as_ref() {
                        "id_verifications" => item.set(
                            "document_number",
                            string(&format!("C{:08}", rng.gen_range(0..100_000_000u32))),
                        ),
                        "ip_analyses" => {
                            let [x, y, z]: [u8; 3] = rng.gen();
                            item.set("ip_address", string(&format!("10.{x}.{y}.{z}")))
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let signed = sign(&Secret::new(SECRET), &payload);
    Delivery {
        session_id: session_id.to_owned(),
        body: signed.body.into(),
        headers: signed.headers,
    }
}

/// Units of work: the deliveries of one session, sent in order, each only
/// after the previous one was acknowledged.
fn workload() -> Vec<Vec<Delivery>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut rng = rand::thread_rng();
    let mut units = Vec::new();
    for i in 0..SINGLE_SESSIONS + PAIR_SESSIONS {
        let session = uuid_v4(&mut rng);
        let vendor = format!("crash-user-{i}");
        let unit = if i < PAIR_SESSIONS {
            vec![
                delivery(IN_PROGRESS, &session, &vendor, now),
                delivery(APPROVED, &session, &vendor, now),
            ]
        } else if i % 2 == 0 {
            vec![delivery(APPROVED, &session, &vendor, now)]
        } else {
            vec![delivery(IN_PROGRESS, &session, &vendor, now)]
        };
        units.push(unit);
    }
    // Spread the two-status sessions through the stream so that some of
    // them straddle the kill.
    let stride = units.len() / PAIR_SESSIONS;
    for p in 0..PAIR_SESSIONS {
        units.swap(p, p * stride + stride / 2);
    }
    units
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .expect("build http client")
}

/// POST one delivery; `Some((status, body))` if the server answered.
async fn post(client: &reqwest::Client, base: &str, d: &Delivery) -> Option<(u16, Json)> {
    let mut req = client
        .post(format!("{base}/webhooks/didit"))
        .body(d.body.clone());
    for (name, value) in &d.headers {
        req = req.header(*name, value);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    // A body cut short by the kill is no answer; a whole body that is not
    // JSON is a wrong answer.
    let body = resp.bytes().await.ok()?;
    Some((status, serde_json::from_slice(&body).unwrap_or(Json::Null)))
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Json) {
    let resp = client
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.json::<Json>().await.unwrap_or(Json::Null);
    (status, body)
}

#[derive(Default)]
struct Tally {
    acks: Mutex<Vec<Ack>>,
    acked: AtomicUsize,
    /// Requests that got no answer, or an answer other than `accepted`.
    failed: AtomicUsize,
    /// Units of work never started because the server was already dead.
    unsent: AtomicUsize,
    killed: AtomicBool,
}

/// Send the workload over `CONNECTIONS` concurrent workers, recording each
/// acknowledgement in `tally`; announce on `kill_now` once `KILL_AFTER_ACKS`
/// deliveries were acknowledged.
async fn fire(
    base: String,
    units: Vec<Vec<Delivery>>,
    tally: Arc<Tally>,
    kill_now: Arc<tokio::sync::Notify>,
) {
    let queue = Arc::new(Mutex::new(units.into_iter()));
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (tally, queue, kill_now, base) =
            (tally.clone(), queue.clone(), kill_now.clone(), base.clone());
        // One client per worker, so the deliveries really use many
        // connections rather than whatever a shared pool settles on.
        let client = client();
        workers.push(tokio::spawn(async move {
            loop {
                let Some(unit) = queue.lock().unwrap().next() else {
                    break;
                };
                if tally.killed.load(Ordering::SeqCst) {
                    tally.unsent.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                for d in unit {
                    match post(&client, &base, &d).await {
                        Some((200, body)) if body["status"] == "accepted" => {
                            let evt_id = body["id"].as_str().expect("ack has an id").to_owned();
                            assert!(evt_id.starts_with("evt_"), "unexpected event id {evt_id}");
                            tally.acks.lock().unwrap().push(Ack {
                                delivery: d,
                                evt_id,
                            });
                            if tally.acked.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACKS {
                                kill_now.notify_one();
                            }
                        }
                        // `killed` is set just before the kill, so an answer
                        // other than `accepted` is excused only if it may
                        // have been cut short by the kill.
                        Some((status, body)) if !tally.killed.load(Ordering::SeqCst) => {
                            panic!("delivery refused before the kill: {status} {body}")
                        }
                        _ => {
                            tally.failed.fetch_add(1, Ordering::SeqCst);
                            // The session's next delivery depends on this one
                            // having been acknowledged.
                            break;
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker panicked");
    }
}

/// Run `f` over `items` with a few concurrent workers, keeping the order.
async fn parallel<T, R, F, Fut>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = R> + Send,
{
    let n = items.len();
    let queue = Arc::new(Mutex::new(items.into_iter().enumerate()));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (queue, f) = (queue.clone(), f.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some((i, item)) = queue.lock().unwrap().next() else {
                    break;
                };
                out.push((i, f(item).await));
            }
            out
        }));
    }
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for w in workers {
        for (i, r) in w.await.expect("worker panicked") {
            results[i] = Some(r);
        }
    }
    results.into_iter().map(|r| r.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_delivery_survives_sigkill_and_is_projected_exactly_once() {
    let run = crash_and_check(envs()).await;
    assert!(run.embedded_files, "the embedded default keeps events.db");
}

/// The same on PostgreSQL (`KYCD_DATABASE_URL`, a schema of its own): the
/// acknowledgement waits for the event's transaction to commit there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_every_acknowledged_delivery_survives_sigkill_and_is_projected_exactly_once() {
    let Some(url) = kycd_log::postgres::testing::url_or_skip("crash on PostgreSQL") else {
        return;
    };
    let schemas = kycd_log::postgres::testing::Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let mut envs = envs();
    envs.push(("KYCD_DATABASE_URL", schemas.url_of(&schema)));
    let run = crash_and_check(envs).await;
    assert!(!run.embedded_files, "on PostgreSQL no SQLite file is made");
    // Every acknowledged delivery is in the database (the runs checked
    // the rest through the API).
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let events: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".events"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        events as usize >= run.acks,
        "{events} events for {} acks",
        run.acks
    );
    pool.close().await;
    schemas.drop_all().await;
}

/// What a crash run leaves to check by backend.
struct CrashRun {
    acks: usize,
    /// Whether the data directory holds `events.db`.
    embedded_files: bool,
}

async fn crash_and_check(envs: Vec<(&'static str, String)>) -> CrashRun {
    let root = tempfile::TempDir::new().unwrap();
    let data_dir: PathBuf = root.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();

    let units = workload();
    let total: usize = units.iter().map(Vec::len).sum();

    // Run 1: fire, and SIGKILL the server once enough deliveries were
    // acknowledged, while the other workers have requests in flight.
    let first = Server::start(&data_dir, &root.path().join("run1.log"), &envs);
    let base = first.base.clone();
    let first = Arc::new(Mutex::new(first));
    let tally = Arc::new(Tally::default());
    let kill_now = Arc::new(tokio::sync::Notify::new());
    let killer = {
        let (first, tally, kill_now) = (first.clone(), tally.clone(), kill_now.clone());
        tokio::spawn(async move {
            kill_now.notified().await;
            tally.killed.store(true, Ordering::SeqCst);
            first.lock().unwrap().kill();
        })
    };
    fire(base, units, tally.clone(), kill_now.clone()).await;
    // Every worker is done; if the threshold was never reached the killer
    // is still waiting and the assertions below say so.
    let kill_happened = tally.killed.load(Ordering::SeqCst);
    killer.abort();
    drop(first);

    let acks = tally.acks.lock().unwrap().clone();
    let failed = tally.failed.load(Ordering::SeqCst);
    let unsent = tally.unsent.load(Ordering::SeqCst);
    eprintln!(
        "run 1: {total} deliveries, {} acknowledged, {failed} failed, {unsent} sessions never started",
        acks.len()
    );
    assert!(kill_happened, "the server was never killed");
    assert!(
        acks.len() >= KILL_AFTER_ACKS,
        "fewer acks than the kill threshold"
    );
    assert!(
        acks.len() < total && failed + unsent > 0,
        "the kill did not happen mid-stream: every delivery was acknowledged"
    );

    // Run 2: the same data directory, a new port.
    let second = Server::start(&data_dir, &root.path().join("run2.log"), &envs);
    let base = Arc::new(second.base.clone());
    let client = client();

    let t = Instant::now();
    every_ack_is_in_the_log(&client, &base, &acks).await;
    eprintln!("run 2: every ack is in the log ({:?})", t.elapsed());
    let t = Instant::now();
    every_acked_session_holds_its_events_once(&client, &base, &acks).await;
    eprintln!(
        "run 2: every acked session projected, each event once ({:?})",
        t.elapsed()
    );
    let t = Instant::now();
    resends_are_duplicates(&client, &base, &acks).await;
    eprintln!("run 2: resends answered as duplicates ({:?})", t.elapsed());
    drop(second);
    CrashRun {
        acks: acks.len(),
        embedded_files: data_dir.join("events.db").exists(),
    }
}

async fn every_ack_is_in_the_log(client: &reqwest::Client, base: &Arc<String>, acks: &[Ack]) {
    let (client, base) = (client.clone(), base.clone());
    let results = parallel(acks.to_vec(), move |ack| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let got = get(&client, format!("{base}/api/v1/events/{}", ack.evt_id)).await;
            (ack, got)
        }
    })
    .await;
    for (ack, (status, body)) in results {
        assert_eq!(
            status, 200,
            "acknowledged {} is not in the log after the restart: {body}",
            ack.evt_id
        );
        assert_eq!(body["id"], ack.evt_id.as_str(), "{body}");
        assert_eq!(
            body["session_id"],
            ack.delivery.session_id.as_str(),
            "{body}"
        );
    }
}

/// Poll until every acknowledged session is projected with each of its
/// acknowledged events in its history; an event listed twice fails at once.
async fn every_acked_session_holds_its_events_once(
    client: &reqwest::Client,
    base: &Arc<String>,
    acks: &[Ack],
) {
    let mut expected: HashMap<String, HashSet<String>> = HashMap::new();
    for ack in acks {
        expected
            .entry(ack.delivery.session_id.clone())
            .or_default()
            .insert(ack.evt_id.clone());
    }
    let two_status = expected.values().filter(|e| e.len() == 2).count();
    assert!(
        two_status > 0,
        "no session got both of its statuses acknowledged"
    );

    let deadline = Instant::now() + PROJECTION_DEADLINE;
    let mut pending: Vec<String> = expected.keys().cloned().collect();
    let mut last: HashMap<String, (u16, Json)> = HashMap::new();
    while !pending.is_empty() {
        let (c, b) = (client.clone(), base.clone());
        let results = parallel(pending, move |sid| {
            let (client, base) = (c.clone(), b.clone());
            async move {
                let got = get(&client, format!("{base}/api/v1/sessions/{sid}")).await;
                (sid, got)
            }
        })
        .await;
        pending = Vec::new();
        for (sid, (status, body)) in results {
            if status == 200 && history_complete(&sid, &body, &expected[&sid]) {
                continue;
            }
            assert!(
                status == 200 || status == 404,
                "GET session {sid}: {status} {body}"
            );
            last.insert(sid.clone(), (status, body));
            pending.push(sid);
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged sessions not fully projected after {PROJECTION_DEADLINE:?}, e.g. {:?}",
            pending.len(),
            last.get(&pending[0])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the session's history lists every expected event; panics if it
/// lists any event more than once.
fn history_complete(sid: &str, body: &Json, expected: &HashSet<String>) -> bool {
    assert_eq!(body["session_id"], sid, "{body}");
    let history = body["history"]
        .as_array()
        .unwrap_or_else(|| panic!("session {sid} has no history array: {body}"));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for entry in history {
        let evt = entry["event"]
            .as_str()
            .unwrap_or_else(|| panic!("history entry without event: {body}"));
        *seen.entry(evt).or_default() += 1;
    }
    if let Some((evt, n)) = seen.iter().find(|(_, n)| **n > 1) {
        panic!("session {sid} lists {evt} {n} times: {body}");
    }
    expected.iter().all(|e| seen.contains_key(e.as_str()))
}

/// A resend of an acknowledged delivery is recognised after the restart,
/// with the event id it was first given.
async fn resends_are_duplicates(client: &reqwest::Client, base: &Arc<String>, acks: &[Ack]) {
    let sample: Vec<Ack> = acks.iter().step_by(20).cloned().collect();
    let (client, base) = (client.clone(), base.clone());
    let results = parallel(sample, move |ack| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let got = post(&client, &base, &ack.delivery).await;
            (ack, got)
        }
    })
    .await;
    for (ack, got) in results {
        let (status, body) = got.expect("resend answered");
        assert_eq!(status, 200, "resend of {}: {body}", ack.evt_id);
        assert_eq!(
            body["status"], "duplicate",
            "resend of {}: {body}",
            ack.evt_id
        );
        assert_eq!(body["id"], ack.evt_id.as_str(), "resend: {body}");
    }
}

/// Three `kycd serve` instances on one PostgreSQL schema: deliveries go to
/// all three in turn; the instance holding the projection's lease is
/// SIGKILLed mid-stream; another takes the lease over within the stated
/// time (`LEASE_TTL` plus a tick, with a margin for a loaded machine), and
/// every acknowledged delivery is projected exactly once, each session
/// with exactly one decision, the audit chain intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_database_and_survive_the_projectors_sigkill() {
    let Some(url) = kycd_log::postgres::testing::url_or_skip("three instances") else {
        return;
    };
    let schemas = kycd_log::postgres::testing::Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let root = tempfile::TempDir::new().unwrap();
    let key_file = root.path().join("audit.key");
    let mut servers = Vec::new();
    for name in ["kycd-a", "kycd-b", "kycd-c"] {
        let data_dir = root.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut envs = envs();
        envs.push(("KYCD_DATABASE_URL", schemas.url_of(&schema)));
        envs.push(("KYCD_INSTANCE_ID", name.to_owned()));
        // One key for the cluster: every instance appends to one chain.
        envs.push(("KYCD_AUDIT_KEY_FILE", key_file.display().to_string()));
        let log = root.path().join(format!("{name}.log"));
        servers.push((name, Server::start(&data_dir, &log, &envs)));
    }
    let client = client();
    let cluster_of = |base: String| {
        let client = client.clone();
        async move { get(&client, format!("{base}/api/v1/cluster")).await.1 }
    };
    let holder = |view: &Json, lease: &str| -> Option<String> {
        view["leases"].as_array()?.iter().find_map(|l| {
            (l["name"] == lease && l["expired"] == false)
                .then(|| l["owner"].as_str().map(str::to_owned))
                .flatten()
        })
    };
    // All three join and every lease finds one holder.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first_view = loop {
        let view = cluster_of(servers[0].1.base.clone()).await;
        let alive = view["instances"]
            .as_array()
            .map(|i| i.iter().filter(|i| i["alive"] == true).count())
            .unwrap_or(0);
        let held = ["partition/0", "timers", "lane:operator.webhook"]
            .iter()
            .all(|l| holder(&view, l).is_some());
        if alive == 3 && held {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never formed: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let projector = holder(&first_view, "partition/0").unwrap();

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut acks = Vec::new();
    let send = |batch: Vec<Delivery>, bases: Vec<String>| {
        let client = client.clone();
        async move {
            let mut acked = Vec::new();
            for (i, d) in batch.into_iter().enumerate() {
                let base = &bases[i % bases.len()];
                match post(&client, base, &d).await {
                    Some((200, body)) if body["status"] == "accepted" => acked.push(Ack {
                        evt_id: body["id"].as_str().unwrap().to_owned(),
                        delivery: d,
                    }),
                    other => panic!("a live instance refused a delivery: {other:?}"),
                }
            }
            acked
        }
    };
    let deliveries = |from: usize, n: usize| -> Vec<Delivery> {
        // Every fifth session gets two statuses, in order, which may go
        // to different instances.
        (from..from + n)
            .flat_map(|i| {
                let sid = format!("6b1d2c3e-0000-4000-8000-{i:012}");
                let user = format!("cluster-user-{i}");
                let first = (i % 5 == 0).then(|| delivery(IN_PROGRESS, &sid, &user, now));
                first
                    .into_iter()
                    .chain([delivery(APPROVED, &sid, &user, now)])
            })
            .collect()
    };
    let all: Vec<String> = servers.iter().map(|(_, s)| s.base.clone()).collect();
    acks.extend(send(deliveries(0, 90), all).await);

    // SIGKILL the projector's instance.
    let index = servers.iter().position(|(n, _)| *n == projector).unwrap();
    let (_, mut killed) = servers.remove(index);
    killed.kill();
    let killed_at = Instant::now();
    let survivors: Vec<String> = servers.iter().map(|(_, s)| s.base.clone()).collect();
    acks.extend(send(deliveries(90, 90), survivors.clone()).await);

    // A survivor takes the projection over.
    let deadline = killed_at + Duration::from_secs(40);
    let taken_by = loop {
        let view = cluster_of(survivors[0].clone()).await;
        if let Some(owner) = holder(&view, "partition/0").filter(|o| *o != projector) {
            break owner;
        }
        assert!(
            Instant::now() < deadline,
            "no instance took the projection over: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let takeover = killed_at.elapsed();
    eprintln!("partition/0: {projector} killed, {taken_by} took over after {takeover:?}");
    // The lease's time to live (10 s) and a tick (1 s), with a margin.
    assert!(
        takeover < Duration::from_secs(25),
        "takeover took {takeover:?}"
    );

    let base = Arc::new(survivors[0].clone());
    every_ack_is_in_the_log(&client, &base, &acks).await;
    every_acked_session_holds_its_events_once(&client, &base, &acks).await;
    resends_are_duplicates(&client, &base, &acks).await;

    // Exactly one active decision per session, and one chain.
    let pool = sqlx::PgPool::connect(&schemas.url_of(&schema))
        .await
        .unwrap();
    let deadline = Instant::now() + PROJECTION_DEADLINE;
    loop {
        let decided: i64 =
            sqlx::query_scalar("SELECT count(DISTINCT session_id) FROM decisions WHERE NOT shadow")
                .fetch_one(&pool)
                .await
                .unwrap();
        // 180 sessions; the 36 with two statuses are decided once (at
        // their `Approved`).
        if decided == 180 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{decided} of 180 sessions decided"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT session_id FROM decisions WHERE NOT shadow
           GROUP BY session_id, event_offset HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(twice, 0, "an event decided twice");
    pool.close().await;
    let store = kycd_log::postgres::store::PgStore::open(
        kycd_log::postgres::Database::connect(
            &schemas.url_of(&schema),
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
    drop(servers);
    schemas.drop_all().await;
}
