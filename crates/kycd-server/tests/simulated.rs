//! kycd end to end with the Didit simulator as the provider: simulated
//! customers, deliveries signed and retried as Didit does, and the fault
//! modes Didit's delivery has in real life (duplicates, reordering, loss).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use kycd_log::store::{DecisionQuery, Store};
use kycd_sim::{DeliveryRecord, Fate, Faults, Truth, WebhookVersion};

// Not every test file uses every helper (this one does not settle the loop).
#[allow(dead_code)]
mod support;
use support::Stack;

const SECRET: &str = "simulated-e2e-secret";
/// Statuses kycd decides on: the four that carry Didit's results, and an
/// expiry (decided on empty results).
const DECIDED: [&str; 5] = ["Approved", "Declined", "In Review", "Abandoned", "Expired"];

async fn stack(seed: u64, faults: Faults, version: WebhookVersion) -> Stack {
    let sim = support::simulator(SECRET, seed, 1000.0, faults).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = support::settings(&sim, SECRET, dir.path().to_path_buf());
    Stack::start(sim, settings, dir, version).await
}

impl Stack {
    /// Run `users` customers until every delivery settled and kycd applied
    /// everything it acknowledged.
    async fn run(&self, users: usize) -> Vec<Truth> {
        self.sim.run(users);
        self.sim
            .wait_settled(Duration::from_secs(60))
            .await
            .expect("the simulation settles");
        let app = &self.running.app;
        let head = app.log.head().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut applied = app.applied.clone();
        while *applied.borrow_and_update() < head {
            assert!(Instant::now() < deadline, "projector did not catch up");
            let _ = tokio::time::timeout(Duration::from_millis(200), applied.changed()).await;
        }
        self.sim.truth()
    }

    fn store(&self) -> &dyn Store {
        &*self.running.app.store
    }

    /// kycd's status and current decision outcome for a session.
    async fn view(&self, session: &str) -> (Option<String>, Option<String>) {
        match self.store().get_session(session).await.unwrap() {
            None => (None, None),
            Some(s) => (
                Some(s.status),
                s.doc
                    .get("decision")
                    .and_then(|d| d.get("outcome"))
                    .and_then(|o| o.as_str())
                    .map(str::to_owned),
            ),
        }
    }

    /// Active-policy decisions per session.
    async fn decisions(&self) -> HashMap<String, Vec<u64>> {
        let mut out: HashMap<String, Vec<u64>> = HashMap::new();
        let mut after = 0;
        loop {
            let page = self
                .store()
                .list_decisions(DecisionQuery {
                    after_offset: Some(after),
                    limit: 200,
                    ..Default::default()
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.event_offset;
            for d in page {
                out.entry(d.session_id).or_default().push(d.event_offset);
            }
        }
        out
    }
}

/// Distinct Didit events (by `event_id`) carrying a decided status that
/// reached kycd, per session.
fn delivered_decided(records: &[DeliveryRecord]) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for r in records {
        if r.fate == Fate::Delivered && DECIDED.contains(&r.status.as_str()) {
            out.entry(r.session_id.clone())
                .or_default()
                .insert(r.event_id.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_reordering_leave_one_current_decision_per_session() {
    let faults = Faults {
        duplicate: 0.3,
        reorder: 0.3,
        delay_ms: (0, 3_000),
        ..Faults::none()
    };
    let s = stack(11, faults, WebhookVersion::V3).await;
    let truth = s.run(60).await;
    let stats = s.sim.stats();
    assert!(stats.duplicated > 10, "the fault must fire: {stats:?}");
    assert!(stats.reordered > 5, "the fault must fire: {stats:?}");
    assert_eq!(stats.failed + stats.lost + stats.pending, 0, "{stats:?}");

    let decided = delivered_decided(&s.sim.deliveries());
    let decisions = s.decisions().await;
    let mut mismatched = Vec::new();
    for t in &truth {
        let (status, outcome) = s.view(&t.session_id).await;
        // Reordered deliveries never move a session backwards: kycd ends on
        // the status Didit ended on.
        if status.as_deref() != Some(t.final_status.as_str()) {
            mismatched.push((t.session_id.clone(), t.final_status.clone(), status));
        }
        if DECIDED.contains(&t.final_status.as_str()) {
            assert!(
                outcome.is_some(),
                "{} ({}) has no decision",
                t.session_id,
                t.final_status
            );
        }
        // One decision per distinct decided event, never one per copy.
        let made = decisions.get(&t.session_id).map_or(0, Vec::len);
        let events = decided.get(&t.session_id).map_or(0, BTreeSet::len);
        assert!(
            made <= events,
            "{}: {made} decisions for {events} decided events",
            t.session_id
        );
        let offsets: BTreeSet<_> = decisions.get(&t.session_id).into_iter().flatten().collect();
        assert_eq!(offsets.len(), made, "two decisions on one event");
    }
    assert!(
        mismatched.is_empty(),
        "kycd's status differs from Didit's: {mismatched:?}"
    );
    // Every copy was acknowledged, and only the first of each was new.
    // The log also holds kycd's audit anchors, which timing decides.
    let log_events = s
        .running
        .app
        .log
        .read(0, 1_000_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind != kycd_log::anchor::ANCHOR_KIND)
        .count();
    let distinct: BTreeSet<_> = s
        .sim
        .deliveries()
        .iter()
        .map(|r| r.event_id.clone())
        .collect();
    assert_eq!(log_events, distinct.len());
    s.sim.shutdown().await;
    s.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_deliveries_show_as_sessions_without_a_decision() {
    let faults = Faults {
        loss: 0.25,
        ..Faults::none()
    };
    let s = stack(12, faults, WebhookVersion::V3).await;
    let truth = s.run(60).await;
    assert!(s.sim.stats().lost > 10, "{:?}", s.sim.stats());

    let decided = delivered_decided(&s.sim.deliveries());
    let mut gaps = 0;
    for t in truth
        .iter()
        .filter(|t| DECIDED.contains(&t.final_status.as_str()))
    {
        let (_, outcome) = s.view(&t.session_id).await;
        let reached = decided.contains_key(&t.session_id);
        // A decision exists exactly when a decided delivery got through;
        // the rest is the gap reconciliation has to close.
        assert_eq!(
            outcome.is_some(),
            reached,
            "{}: decision {outcome:?}, decided delivery received {reached}",
            t.session_id
        );
        gaps += usize::from(!reached);
    }
    assert!(
        gaps > 0,
        "with a quarter lost, some sessions must lack a decision"
    );
    s.sim.shutdown().await;
    s.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_destinations_are_decided_like_v3() {
    let mut outcomes: BTreeMap<&str, Vec<(String, Option<String>)>> = BTreeMap::new();
    for (name, version) in [
        ("v1", WebhookVersion::V1),
        ("v2", WebhookVersion::V2),
        ("v3", WebhookVersion::V3),
    ] {
        let s = stack(13, Faults::none(), version).await;
        let truth = s.run(25).await;
        for t in &truth {
            let (status, outcome) = s.view(&t.session_id).await;
            assert_eq!(status.as_deref(), Some(t.final_status.as_str()), "{name}");
            if DECIDED.contains(&t.final_status.as_str()) {
                assert!(outcome.is_some(), "{name}: {} undecided", t.session_id);
            }
            // Ring members' outcomes depend on which member kycd hears
            // about first, which timing decides, not the payload version.
            if !matches!(t.scenario.name(), "document_ring" | "multi_account") {
                outcomes
                    .entry(name)
                    .or_default()
                    .push((t.scenario.name().to_owned(), outcome));
            }
        }
        s.sim.shutdown().await;
        s.running.shutdown().await.unwrap();
    }
    // The same seed gives the same customers; the payload version must not
    // change what kycd decides about them.
    assert_eq!(outcomes["v2"], outcomes["v3"]);
    assert_eq!(outcomes["v1"].len(), outcomes["v3"].len());
}
