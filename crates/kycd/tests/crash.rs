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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use didit::canonical::Value;
use didit::signature::{sign, Secret};
use rand::Rng;
use serde_json::Value as Json;

const SECRET: &str = "crash-test-secret-tno2NTeRC1ZK3sBOYlBJDyEzBVENl3pQ";

mod support;
use support::acks::{
    every_ack_is_in_the_log, every_acked_session_holds_its_events_once, parallel, Acked, API_TOKEN,
};
use support::Server;

fn envs() -> Vec<(&'static str, String)> {
    vec![
        ("KYCD_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("KYCD_API_TOKEN", API_TOKEN.to_owned()),
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

    let acked: Vec<Acked> = acks
        .iter()
        .map(|a| Acked {
            session_id: a.delivery.session_id.clone(),
            evt_id: a.evt_id.clone(),
        })
        .collect();
    let t = Instant::now();
    every_ack_is_in_the_log(&client, &base, &acked).await;
    eprintln!("run 2: every ack is in the log ({:?})", t.elapsed());
    let t = Instant::now();
    let two_status =
        every_acked_session_holds_its_events_once(&client, &base, &acked, PROJECTION_DEADLINE)
            .await;
    assert!(
        two_status > 0,
        "no session got both of its statuses acknowledged"
    );
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
