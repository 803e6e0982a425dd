//! Crash test for the outbox: the real binary is SIGKILLed while it is
//! writing decisions back to (a simulated) Didit, restarted on the same data
//! directory, and every effect must still have happened at Didit exactly
//! once. Didit's own API call log (the simulator's) is the witness: no
//! session's status was changed twice, no blocklist entry was made twice,
//! and a call repeated after the crash was one Didit treats as a no-op.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kycd_sim::{Faults, RateLimits, SimConfig, WebhookVersion};
use serde_json::Value;

mod support;
use support::{tail, Server};

const SECRET: &str = "outbox-crash-secret";
const TOKEN: &str = "outbox-crash-token";
const DEADLINE: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/api/v1{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn count(base: &str, state: &str) -> usize {
    get(base, &format!("/actions?state={state}&limit=500")).await["items"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_the_outbox_repeats_nothing_at_didit() {
    // Didit accepts one write per (simulated) minute here, and asks to be
    // called back no sooner than a second later, so write-backs queue and
    // the kill finds actions under way.
    let sim = kycd_sim::start(SimConfig {
        webhook_secret: SECRET.into(),
        seed: 81,
        time_scale: 1000.0,
        faults: Faults::none(),
        rate_limits: RateLimits {
            writes: 1,
            ..RateLimits::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let port = free_port();
    let envs = vec![
        ("KYCD_LISTEN", format!("127.0.0.1:{port}")),
        ("KYCD_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("KYCD_API_TOKEN", TOKEN.to_owned()),
        ("KYCD_DIDIT_API_KEY", sim.api_key().to_owned()),
        ("KYCD_DIDIT_BASE_URL", sim.base_url()),
        ("KYCD_ACT_ON_SANDBOX", "true".to_owned()),
        ("KYCD_RETRY_TIME_SCALE", "50".to_owned()),
        ("KYCD_RECONCILE_INTERVAL_SECS", "0".to_owned()),
    ];
    // The default policy steps up (adaptive verification): give every
    // check a workflow at the simulator, as an operator would.
    let mut envs = envs;
    envs.extend(support::step_up_workflows(&sim).await);
    let mut first = Server::start(&data, &root.path().join("run1.log"), &envs);
    let base = first.base.clone();
    sim.add_destination(&format!("{base}/webhooks/didit"), WebhookVersion::V3)
        .unwrap();
    sim.run(300);

    // Kill once Didit has seen some write-backs and others are still owed.
    let end = Instant::now() + DEADLINE;
    let (done_before, owed_before) = loop {
        assert!(
            Instant::now() < end,
            "no write-backs under way; server log:\n{}",
            tail(&root.path().join("run1.log"))
        );
        let written = sim
            .calls()
            .iter()
            .filter(|c| c.path.ends_with("/update-status/") && c.status == 200)
            .count();
        let owed = count(&base, "pending").await + count(&base, "running").await;
        if written >= 2 && owed >= 2 {
            break (written, owed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.kill();
    assert!(done_before > 0 && owed_before > 0);

    // Restarted on the same data, it finishes what it owed.
    let second = Server::start(&data, &root.path().join("run2.log"), &envs);
    assert_eq!(second.base, base);
    sim.wait_settled(DEADLINE)
        .await
        .expect("the simulation settles");
    loop {
        assert!(
            Instant::now() < end,
            "the outbox did not drain; server log:\n{}",
            tail(&root.path().join("run2.log"))
        );
        let ready: Value = reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        let lag = ready
            .pointer("/checks/projector_lag")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let owed = count(&base, "pending").await + count(&base, "running").await;
        if owed == 0 && lag == 0 && sim.wait_settled(Duration::from_millis(1)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(count(&base, "dead").await, 0, "no action died");
    let calls = sim.calls();
    for (key, n) in support::changes(&calls) {
        assert_eq!(n, 1, "{key:?} happened {n} times at Didit");
    }
    // Every write-back kycd recorded as done is in effect at Didit.
    let done = get(&base, "/actions?state=done&limit=500").await;
    let truth: HashMap<String, String> = sim
        .truth()
        .into_iter()
        .map(|t| (t.session_id, t.final_status))
        .collect();
    for a in done["items"].as_array().unwrap() {
        if a["kind"] == "didit.update_status" && a["payload"]["new_status"] == "Declined" {
            let session = a["session_id"].as_str().unwrap();
            assert_eq!(truth[session], "Declined", "{session}");
        }
    }
    // And the restarted server did write back what the first one owed.
    let written_after = calls
        .iter()
        .filter(|c| c.path.ends_with("/update-status/") && c.status == 200)
        .count();
    assert!(
        written_after > done_before,
        "{written_after} write-backs in all, {done_before} before the kill"
    );
    drop(second);
    sim.shutdown().await;
}
