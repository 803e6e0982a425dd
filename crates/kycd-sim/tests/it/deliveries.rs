//! Webhook deliveries: signatures, payload versions, retries and faults.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use didit::payload::{Envelope, PayloadVersion};
use didit::signature::{Scheme, Secret, Verifier, USER_AGENT};
use kycd_sim::{AttemptOutcome, Fate, Faults, Outage, Sim, WebhookVersion};
use serde_json::Value;

use crate::support::{self, Api, Receiver, SECRET, SETTLE};

/// What a decision says, compared across payload versions: the liveness
/// score and the risk codes.
type Facts = (Option<f64>, Vec<String>);

#[tokio::test]
async fn every_delivery_verifies_with_the_configured_secret_on_every_scheme() {
    let sim = support::sim(21, 1000.0).await;
    let receiver = support::v3_receiver(&sim).await;
    sim.run(30);
    sim.wait_settled(SETTLE).await.unwrap();
    let received = receiver.received();
    assert_eq!(received.len(), sim.deliveries().len());
    assert!(received.len() >= 60, "{}", received.len());

    let verifier = Verifier::new(vec![Secret::new(SECRET)]);
    let wrong = Verifier::new(vec![Secret::new("another-secret")]);
    let mut non_ascii_names = 0;
    for r in &received {
        let headers = r.signature_headers();
        assert!(headers.x_signature.is_some() && headers.x_signature_v2.is_some());
        assert!(headers.x_signature_simple.is_some());
        assert_eq!(r.header("user-agent"), Some(USER_AGENT));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            r.body.is_ascii(),
            "the wire body escapes non-ascii characters"
        );

        // Raw first, as the verifier tries it; and timestamps are the real
        // clock, so they pass the 300 s freshness check.
        let verified = verifier.verify(&r.body, &headers, support::now()).unwrap();
        assert_eq!(verified.scheme, Scheme::Raw);
        let body = r.json();
        assert_eq!(
            r.header("x-timestamp"),
            Some(body["timestamp"].to_string().as_str())
        );
        assert!(wrong.verify(&r.body, &headers, support::now()).is_err());

        // V2 alone verifies the same body.
        let mut v2_only = headers.clone();
        v2_only.x_signature = None;
        let verified = verifier.verify(&r.body, &v2_only, support::now()).unwrap();
        assert_eq!(verified.scheme, Scheme::V2);

        // Simple alone authenticates the envelope fields when accepted.
        let mut simple_only = headers.clone();
        simple_only.x_signature = None;
        simple_only.x_signature_v2 = None;
        let verified = verifier
            .clone()
            .accept_simple(true)
            .verify(&r.body, &simple_only, support::now())
            .unwrap();
        assert_eq!(verified.scheme, Scheme::Simple);

        // Any changed byte breaks it.
        let mut tampered = r.body.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 0x01;
        assert!(verifier
            .verify(&tampered, &headers, support::now())
            .is_err());

        let envelope = Envelope::from_slice(&r.body).unwrap();
        let status = envelope.status.clone().unwrap();
        assert_eq!(envelope.decision.is_some(), status.is_decided(), "{status}");
        assert_eq!(envelope.environment.unwrap().as_str(), "sandbox");
        assert!(envelope.event_id.is_some());
        assert_eq!(
            envelope.application_id.as_deref(),
            Some(sim.application_id())
        );
        if let Some(d) = &envelope.decision {
            assert_eq!(d.version, PayloadVersion::V3);
            if d.id_verifications
                .iter()
                .any(|i| i.full_name.as_deref().is_some_and(|n| !n.is_ascii()))
            {
                non_ascii_names += 1;
            }
        }
    }
    assert!(non_ascii_names > 0, "some names exercise the escaping");
}

#[tokio::test]
async fn v1_and_v2_destinations_get_payloads_kycd_reads_back_to_the_same_facts() {
    let sim = support::sim(22, 1000.0).await;
    let receivers = [
        (WebhookVersion::V1, Receiver::start().await),
        (WebhookVersion::V2, Receiver::start().await),
        (WebhookVersion::V3, Receiver::start().await),
    ];
    for (version, r) in &receivers {
        sim.add_destination(&r.url(), *version).unwrap();
    }
    sim.run(40);
    sim.wait_settled(SETTLE).await.unwrap();
    let verifier = Verifier::new(vec![Secret::new(SECRET)]);

    // (session, status) -> liveness score and risks, per version.
    let mut seen: BTreeMap<(String, String), HashMap<WebhookVersion, Facts>> = BTreeMap::new();
    for (version, r) in &receivers {
        let received = r.received();
        assert!(!received.is_empty());
        for delivery in received {
            verifier
                .verify(
                    &delivery.body,
                    &delivery.signature_headers(),
                    support::now(),
                )
                .unwrap();
            let envelope = Envelope::from_slice(&delivery.body).unwrap();
            if *version == WebhookVersion::V1 {
                assert!(envelope.webhook_type_inferred, "v1 has no webhook_type");
                assert!(envelope.event_id.is_none());
            } else {
                assert!(!envelope.webhook_type_inferred);
            }
            let Some(decision) = envelope.decision else {
                continue;
            };
            let expected = match version {
                WebhookVersion::V1 => PayloadVersion::V1,
                WebhookVersion::V2 => PayloadVersion::V2,
                WebhookVersion::V3 => PayloadVersion::V3,
            };
            if decision.liveness_checks.is_empty() && decision.id_verifications.is_empty() {
                continue;
            }
            assert_eq!(decision.version, expected);
            if envelope.webhook_type.as_str() != "status.updated" {
                continue;
            }
            let mut risks: Vec<String> = decision
                .risk_codes()
                .into_iter()
                .filter(|r| !r.contains("EMAIL") && !r.contains("NUMBER"))
                .map(str::to_owned)
                .collect();
            risks.sort();
            let liveness = decision.liveness_checks.first().and_then(|l| l.score);
            seen.entry((
                envelope.session_id.unwrap(),
                envelope.status.unwrap().as_str().to_owned(),
            ))
            .or_default()
            .insert(*version, (liveness, risks));
        }
    }
    let mut compared = 0;
    for (key, by_version) in &seen {
        let Some(v3) = by_version.get(&WebhookVersion::V3) else {
            continue;
        };
        for version in [WebhookVersion::V1, WebhookVersion::V2] {
            let other = by_version
                .get(&version)
                .unwrap_or_else(|| panic!("{key:?} missing for {version:?}"));
            assert_eq!(other, v3, "{key:?} {version:?}");
            compared += 1;
        }
    }
    assert!(compared > 20, "{compared}");
    // v1 predates data.updated.
    let v1_types: Vec<Value> = receivers[0]
        .1
        .received()
        .iter()
        .map(|r| r.json()["webhook_type"].clone())
        .collect();
    assert!(v1_types.iter().all(Value::is_null));
}

#[tokio::test]
async fn with_duplicate_1_every_delivery_arrives_twice_with_the_same_event_id() {
    let (sim, receiver) = support::run_with_faults(
        23,
        Faults {
            duplicate: 1.0,
            ..Faults::none()
        },
        10,
    )
    .await;
    let mut by_event: HashMap<String, Vec<Value>> = HashMap::new();
    for r in receiver.received() {
        let body = r.json();
        by_event
            .entry(body["event_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(body);
    }
    assert!(by_event.len() >= 20);
    for (event_id, copies) in &by_event {
        assert_eq!(copies.len(), 2, "{event_id}");
        assert_eq!(copies[0]["status"], copies[1]["status"]);
        assert_eq!(copies[0]["session_id"], copies[1]["session_id"]);
    }
    let stats = sim.stats();
    assert_eq!(stats.duplicated, by_event.len());
    assert_eq!(stats.acknowledged, 2 * by_event.len());
}

#[tokio::test]
async fn lost_deliveries_are_never_received_and_are_counted() {
    let (sim, receiver) = support::run_with_faults(
        24,
        Faults {
            loss: 0.4,
            ..Faults::none()
        },
        20,
    )
    .await;
    let records = sim.deliveries();
    let lost: Vec<_> = records.iter().filter(|r| r.fate == Fate::Lost).collect();
    assert!(!lost.is_empty());
    assert!(lost.iter().all(|r| r.attempts.is_empty()));
    let received: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .collect();
    for r in &lost {
        assert!(
            !received.contains(&r.event_id),
            "lost {} arrived",
            r.event_id
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.lost, lost.len());
    assert_eq!(received.len(), records.len() - lost.len());
    assert_eq!(stats.acknowledged, received.len());
}

#[tokio::test]
async fn reordering_delivers_a_later_event_before_an_earlier_one() {
    let (sim, receiver) = support::run_with_faults(
        25,
        Faults {
            reorder: 1.0,
            ..Faults::none()
        },
        10,
    )
    .await;
    // Emission order per session, from the records.
    let emitted: HashMap<String, u64> = sim
        .deliveries()
        .iter()
        .map(|r| (r.event_id.clone(), r.id))
        .collect();
    let mut last_seen: HashMap<String, u64> = HashMap::new();
    let mut inversions = 0;
    for r in receiver.received() {
        let body = r.json();
        let session = body["session_id"].as_str().unwrap().to_owned();
        let order = emitted[body["event_id"].as_str().unwrap()];
        if let Some(previous) = last_seen.get(&session) {
            if order < *previous {
                inversions += 1;
            }
        }
        let entry = last_seen.entry(session).or_insert(order);
        *entry = (*entry).max(order);
    }
    assert!(inversions > 0, "nothing arrived out of order");
    assert!(sim.stats().reordered > 0);
    assert_eq!(sim.stats().acknowledged, receiver.received().len());
}

#[tokio::test]
async fn a_receiver_answering_500_gets_three_attempts_and_the_delivery_is_dropped() {
    let sim = support::sim(26, 10_000.0).await;
    let receiver = Receiver::answering(500).await;
    sim.add_destination(&receiver.url(), WebhookVersion::V3)
        .unwrap();
    let api = Api::new(&sim);
    api.held_session(sim.kyc_workflow_id()).await;
    sim.wait_settled(SETTLE).await.unwrap();
    let records = sim.deliveries();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.fate, Fate::Dropped);
    assert_eq!(
        record
            .attempts
            .iter()
            .map(|a| a.outcome)
            .collect::<Vec<_>>(),
        [AttemptOutcome::Status(500); 3]
    );
    // About 60 s and 240 s apart, scaled down 10 000 times.
    let gaps: Vec<u64> = record
        .attempts
        .windows(2)
        .map(|w| w[1].at_ms - w[0].at_ms)
        .collect();
    assert!(gaps[0] >= 5 && gaps[1] >= 21, "{gaps:?}");
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    let event_ids: Vec<Value> = received
        .iter()
        .map(|r| r.json()["event_id"].clone())
        .collect();
    assert!(event_ids.iter().all(|e| *e == event_ids[0]));
    let stats = sim.stats();
    assert_eq!((stats.dropped, stats.failed, stats.retried), (1, 1, 2));
    assert_eq!(stats.acknowledged, 0);
}

#[tokio::test]
async fn a_receiver_answering_404_is_retried_but_400_is_not() {
    for (status, attempts, fate) in [
        (404, 3, Fate::Dropped),
        (400, 1, Fate::Rejected),
        (302, 1, Fate::Rejected),
    ] {
        let sim = support::sim(27, 10_000.0).await;
        let receiver = Receiver::answering(status).await;
        sim.add_destination(&receiver.url(), WebhookVersion::V3)
            .unwrap();
        Api::new(&sim).held_session(sim.kyc_workflow_id()).await;
        sim.wait_settled(SETTLE).await.unwrap();
        let record = &sim.deliveries()[0];
        assert_eq!(record.attempts.len(), attempts, "{status}");
        assert_eq!(record.fate, fate, "{status}");
        assert_eq!(receiver.received().len(), attempts, "{status}");
    }
}

/// One session's first delivery, sent while the receiver is down for
/// `length` (simulated) from the start; returns once it settled.
async fn one_delivery_through_an_outage(
    seed: u64,
    time_scale: f64,
    length: Duration,
) -> (Sim, Receiver) {
    let mut config = support::config(seed, time_scale);
    config.faults = Faults {
        outage: Some(Outage {
            start: Duration::ZERO,
            length,
        }),
        ..Faults::none()
    };
    let sim = kycd_sim::start(config).await.unwrap();
    let receiver = support::v3_receiver(&sim).await;
    Api::new(&sim).held_session(sim.kyc_workflow_id()).await;
    sim.wait_settled(SETTLE).await.unwrap();
    (sim, receiver)
}

#[tokio::test]
async fn an_outage_shorter_than_the_retry_schedule_is_recovered_by_the_retries() {
    // Real-time margins wide enough for a loaded machine: the first
    // attempt falls within the 300 ms outage, the retry ~600 ms later.
    let (sim, receiver) = one_delivery_through_an_outage(28, 100.0, Duration::from_secs(30)).await;
    let record = &sim.deliveries()[0];
    assert_eq!(record.fate, Fate::Delivered);
    assert_eq!(
        record
            .attempts
            .iter()
            .map(|a| a.outcome)
            .collect::<Vec<_>>(),
        [AttemptOutcome::Outage, AttemptOutcome::Status(200)]
    );
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn an_outage_longer_than_the_retry_schedule_loses_the_delivery() {
    // All three attempts (~5 simulated minutes) fall inside the hour.
    let (sim, receiver) =
        one_delivery_through_an_outage(29, 1000.0, Duration::from_secs(3600)).await;
    let record = &sim.deliveries()[0];
    assert_eq!(record.fate, Fate::Dropped);
    assert_eq!(record.attempts.len(), 3);
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn delays_postpone_deliveries_without_losing_them() {
    let (sim, receiver) = support::run_with_faults(
        30,
        Faults {
            delay_ms: (1_000, 30_000),
            ..Faults::none()
        },
        5,
    )
    .await;
    let records = sim.deliveries();
    assert!(records
        .iter()
        .all(|r| (1_000..=30_000).contains(&r.delay_ms)));
    assert!(records.iter().all(|r| r.fate == Fate::Delivered));
    assert_eq!(receiver.received().len(), records.len());
}

/// The keys of a JSON object, sorted.
fn keys(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Didit's published shapes (`didit::testdata`'s vectors) against the
/// simulator's deliveries of the same kind: every key a vector has, a
/// simulated delivery of that version and status has too (values differ;
/// extra keys such as `metadata` set per session are allowed).
#[tokio::test]
async fn deliveries_have_the_shapes_of_didits_own_vectors() {
    let vectors: serde_json::Value = didit::testdata::vectors();
    let vector = |name: &str| -> serde_json::Value {
        let case = vectors["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        serde_json::from_str(case["body"].as_str().unwrap()).unwrap()
    };
    for (version, name) in [
        (WebhookVersion::V3, "approved_full_decision"),
        (WebhookVersion::V2, "v2_singular_decision"),
        (WebhookVersion::V1, "v1_legacy_decision"),
    ] {
        let sim = support::sim(31, 1000.0).await;
        let receiver = Receiver::start().await;
        sim.add_destination(&receiver.url(), version).unwrap();
        sim.run(25);
        sim.wait_settled(SETTLE).await.unwrap();
        let want = vector(name);
        let approved: Vec<serde_json::Value> = receiver
            .received()
            .iter()
            .map(|r| r.json())
            .filter(|b| b["status"] == "Approved" && b["decision"].is_object())
            // KYC sessions only: a biometric re-authentication has no
            // document, AML or location block, in Didit's payloads too.
            .filter(|b| {
                let f = b["decision"]["features"].to_string();
                f.contains("ID_VERIFICATION") || f.contains("OCR")
            })
            .collect();
        assert!(!approved.is_empty(), "{name}: no approved delivery");
        for body in &approved {
            let missing: Vec<_> = keys(&want).difference(&keys(body)).cloned().collect();
            assert!(missing.is_empty(), "{name}: envelope lacks {missing:?}");
            let missing: Vec<_> = keys(&want["decision"])
                .difference(&keys(&body["decision"]))
                .cloned()
                .collect();
            assert!(missing.is_empty(), "{name}: decision lacks {missing:?}");
        }
        if version == WebhookVersion::V3 {
            // Each feature entry has the keys Didit's own entries have,
            // where the vector and the delivery both have one.
            for feature in [
                "id_verifications",
                "liveness_checks",
                "face_matches",
                "ip_analyses",
            ] {
                let want = &want["decision"][feature][0];
                let have = approved
                    .iter()
                    .find_map(|b| b["decision"][feature].get(0).cloned())
                    .unwrap_or_else(|| panic!("no {feature} entry delivered"));
                let missing: Vec<_> = keys(want).difference(&keys(&have)).cloned().collect();
                assert!(missing.is_empty(), "{feature} entries lack {missing:?}");
            }
        }
        sim.shutdown().await;
    }
}

/// A session's deliveries go out one after another: the next leaves only
/// once the one before it has had its first answer. Sent from separate
/// tasks, two deliveries a few simulated seconds apart (milliseconds at a
/// high time scale) were in flight together and reached a receiver that
/// works concurrently, as kycd's intake does, in either order, so the
/// same seed did not give the same arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_deliveries_are_never_in_flight_together() {
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen {
        in_flight: HashMap<String, usize>,
        overlaps: usize,
        received: usize,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    let session = v["session_id"].as_str().unwrap().to_owned();
                    {
                        let mut s = seen.lock().unwrap();
                        let n = s.in_flight.entry(session.clone()).or_default();
                        *n += 1;
                        if *n > 1 {
                            s.overlaps += 1;
                        }
                        s.received += 1;
                    }
                    // A receiver that takes a while to answer, as an intake
                    // does while its group commit syncs.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    *seen.lock().unwrap().in_flight.get_mut(&session).unwrap() -= 1;
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // 5,000 times real time: a session's first two deliveries (8 to 60
    // simulated seconds apart) are 2 to 12 ms apart, less than an answer.
    let sim = support::sim(31, 5_000.0).await;
    sim.add_destination(&format!("http://{addr}/hook"), WebhookVersion::V3)
        .unwrap();
    sim.run(30);
    sim.wait_settled(SETTLE).await.unwrap();
    let s = seen.lock().unwrap();
    assert!(s.received >= 60, "{} deliveries", s.received);
    assert_eq!(s.overlaps, 0, "deliveries of one session overlapped");
}
