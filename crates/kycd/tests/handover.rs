//! A graceful stop hands its leases over at once: with two `kycd serve`
//! processes on one PostgreSQL schema, SIGTERM to the one that projects
//! lets the other take `partition/0` (and the timers) well within the
//! lease's time to live, instead of waiting for it to lapse. A rolling
//! restart then costs no decision a pause of that length per instance.
//! Runs when `KYCD_TEST_POSTGRES_URL` is set.

use std::time::{Duration, Instant};

use kycd_log::postgres::testing::{url_or_skip, Schemas};

mod support;
use support::acks::{self, API_TOKEN};
use support::{tail, Server};

/// The lease's time to live: a handover must come well before it.
const LEASE_TTL: Duration = Duration::from_secs(10);

async fn holder(client: &reqwest::Client, base: &str, lease: &str) -> Option<String> {
    let (_, view) = acks::get(client, format!("{base}/api/v1/cluster")).await;
    view["leases"].as_array()?.iter().find_map(|l| {
        (l["name"] == lease && l["expired"] == false)
            .then(|| l["owner"].as_str().map(str::to_owned))
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_its_leases_over_at_once() {
    let Some(url) = url_or_skip("a_graceful_stop_hands_its_leases_over_at_once") else {
        return;
    };
    let schemas = Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let root = tempfile::TempDir::new().unwrap();
    let envs = |name: &str| {
        vec![
            ("KYCD_WEBHOOK_SECRETS", "handover-secret".to_owned()),
            ("KYCD_API_TOKEN", API_TOKEN.to_owned()),
            ("KYCD_DATABASE_URL", schemas.url_of(&schema)),
            ("KYCD_INSTANCE_ID", name.to_owned()),
            (
                "KYCD_AUDIT_KEY_FILE",
                root.path().join("audit.key").display().to_string(),
            ),
        ]
    };
    let start = |name: &str| {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Server::start(&dir, &root.path().join(format!("{name}.log")), &envs(name))
    };
    let mut a = start("kycd-a");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while holder(&client, &a.base, "partition/0").await.as_deref() != Some("kycd-a") {
        assert!(
            Instant::now() < deadline,
            "{}",
            tail(&root.path().join("kycd-a.log"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = start("kycd-b");
    // kycd-b is up and sees kycd-a holding everything.
    assert_eq!(
        holder(&client, &b.base, "timers").await.as_deref(),
        Some("kycd-a")
    );

    let stopped = Instant::now();
    a.terminate();
    let mut took = None;
    while Instant::now() < stopped + LEASE_TTL * 3 {
        let (p, t) = (
            holder(&client, &b.base, "partition/0").await,
            holder(&client, &b.base, "timers").await,
        );
        if p.as_deref() == Some("kycd-b") && t.as_deref() == Some("kycd-b") {
            took = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log_a = tail(&root.path().join("kycd-a.log"));
    let took = took.unwrap_or_else(|| panic!("kycd-b never took the leases:\n{log_a}"));
    assert!(
        took < LEASE_TTL / 2,
        "the handover took {took:?}, as if the leases had lapsed:\n{log_a}"
    );
    assert!(
        !log_a.contains("could not release a lease"),
        "kycd-a released its leases:\n{log_a}"
    );
    drop(b);
    schemas.drop_all().await;
}
