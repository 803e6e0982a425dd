//! The conformance suite every [`Outbox`] backend runs.
//!
//! [`run_outbox_suite`] takes a function that makes a fresh, empty backend;
//! each check gets its own. The backend is also a [`Store`], because
//! actions and step-ups are written in a projection's commit
//! ([`ProjectionBatch`]). The checks use the traits only, so every backend
//! runs the same ones; they never sleep to wait for work, and each runs
//! under a deadline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use serde_json::json;
use tokio::task::JoinSet;

use super::{
    ActionQuery, ActionRecord, ActionState, Finish, Holder, NewAction, Outbox, StepUpRecord,
};
use crate::store::{ProjectionBatch, Store};
use crate::suite::run_checks;

/// Run every check, each against a fresh backend from `make`.
pub async fn run_outbox_suite<S, F, Fut>(make: F)
where
    S: Store + Outbox,
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<S>>,
{
    run_checks!(
        "outbox",
        make,
        [
            enqueue_is_idempotent_by_key_and_commit_enqueues_too,
            claim_takes_due_actions_oldest_first_within_the_limit,
            an_expired_lease_is_claimed_again_and_the_old_attempt_cannot_finish,
            finish_records_each_ending,
            retry_action_requeues_only_dead_or_skipped_actions,
            release_running_hands_every_claim_back,
            list_actions_filters_and_pages_newest_first,
            counts_and_backlog_follow_states,
            step_ups_upsert_and_come_due,
            an_endpoint_is_disabled_after_consecutive_failures,
            concurrent_claimers_get_each_action_exactly_once,
            a_session_runs_its_didit_actions_one_at_a_time_in_order,
            operator_webhooks_to_the_endpoint_go_one_at_a_time,
            a_claim_records_its_holder_and_a_restart_hands_back_only_its_own,
            concurrent_claimers_keep_every_lane_in_order_one_store,
        ]
    );
}

/// The holder the checks claim as, unless they say otherwise.
pub fn me() -> Holder {
    Holder::new("kycd-test", 1)
}

/// An action of `kind` about `session`, created (and first due) at `at_ms`.
pub fn action(key: &str, kind: &str, session: &str, at_ms: i64) -> NewAction {
    NewAction {
        idempotency_key: key.to_owned(),
        kind: kind.to_owned(),
        session_id: Some(session.to_owned()),
        decision_id: Some(format!("dec_{key}")),
        payload: json!({ "key": key, "nested": { "n": [1, 2.5, null] } }),
        created_at_ms: at_ms,
    }
}

async fn all_actions<S: Outbox + ?Sized>(s: &S) -> Vec<ActionRecord> {
    s.list_actions(ActionQuery {
        limit: 10_000,
        ..ActionQuery::default()
    })
    .await
    .expect("list actions")
}

async fn by_key<S: Outbox + ?Sized>(s: &S, key: &str) -> ActionRecord {
    let all = all_actions(s).await;
    match all.into_iter().find(|a| a.idempotency_key == key) {
        Some(a) => a,
        None => panic!("no action with key {key}"),
    }
}

fn keys(actions: &[ActionRecord]) -> Vec<&str> {
    actions.iter().map(|a| a.idempotency_key.as_str()).collect()
}

async fn enqueue_is_idempotent_by_key_and_commit_enqueues_too<S: Store + Outbox>(s: Arc<S>) {
    let a = action("a", "didit.update_status", "s1", 100);
    let b = action("b", "operator.webhook", "s1", 200);
    let n = s
        .enqueue(vec![a.clone(), b.clone(), a.clone()])
        .await
        .expect("enqueue");
    assert_eq!(n, 2, "a key listed twice in one call is enqueued once");
    assert_eq!(
        s.enqueue(vec![a.clone(), b.clone()])
            .await
            .expect("enqueue"),
        0,
        "keys already enqueued are not enqueued again"
    );
    // Changed content under an existing key is still the same effect.
    let mut a_changed = a.clone();
    a_changed.payload = json!({"other": true});
    a_changed.created_at_ms = 5;
    assert_eq!(s.enqueue(vec![a_changed]).await.expect("enqueue"), 0);

    // A projection's commit enqueues with the same rule.
    let batch = ProjectionBatch {
        actions: vec![a.clone(), action("c", "didit.blocklist", "s2", 300)],
        ..ProjectionBatch::default()
    };
    s.commit("p", 0, 1, batch).await.expect("commit");
    let all = all_actions(&*s).await;
    assert_eq!(keys(&all), ["c", "b", "a"], "each key once, newest first");

    let stored = by_key(&*s, "a").await;
    assert_eq!(stored.kind, a.kind);
    assert_eq!(stored.session_id, a.session_id);
    assert_eq!(stored.decision_id, a.decision_id);
    assert_eq!(
        stored.payload, a.payload,
        "the first enqueue's payload is kept"
    );
    assert_eq!(stored.state, ActionState::Pending);
    assert_eq!(stored.attempts, 0);
    assert_eq!(stored.next_at_ms, 100, "first due when it was caused");
    assert_eq!(stored.created_at_ms, 100);
    assert_eq!(stored.last_error, None);
    assert_eq!(stored.result, None);
    let ids: HashSet<&str> = all.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "ids are unique");
    assert_eq!(
        s.get_action(&stored.id).await.expect("get"),
        Some(stored.clone())
    );
    assert_eq!(s.get_action("act_unknown").await.expect("get"), None);
    assert_eq!(s.enqueue(vec![]).await.expect("enqueue nothing"), 0);
}

async fn claim_takes_due_actions_oldest_first_within_the_limit<S: Store + Outbox>(s: Arc<S>) {
    s.enqueue(vec![
        action("late", "didit.update_status", "s4", 1_000),
        action("third", "didit.update_status", "s3", 300),
        action("first", "didit.update_status", "s1", 100),
        action("second", "operator.webhook", "s2", 200),
    ])
    .await
    .expect("enqueue");
    assert!(
        s.claim(&me(), 500, 1_000, 0, vec![])
            .await
            .expect("claim")
            .is_empty(),
        "a limit of 0 claims nothing"
    );
    let claimed = s.claim(&me(), 500, 1_000, 2, vec![]).await.expect("claim");
    assert_eq!(keys(&claimed), ["first", "second"], "oldest due first");
    for a in &claimed {
        assert_eq!(a.state, ActionState::Running);
        assert_eq!(a.attempts, 1, "a claim counts as an attempt");
        assert_eq!(s.get_action(&a.id).await.expect("get").as_ref(), Some(a));
    }
    let excluded = s
        .claim(&me(), 500, 1_000, 10, vec!["didit.update_status".into()])
        .await
        .expect("claim");
    assert!(
        excluded.is_empty(),
        "excluded kinds are skipped: {excluded:?}"
    );
    let rest = s.claim(&me(), 500, 1_000, 10, vec![]).await.expect("claim");
    assert_eq!(
        keys(&rest),
        ["third"],
        "held actions are not claimed again and undue ones wait"
    );
    assert!(s
        .claim(&me(), 999, 1_000, 10, vec![])
        .await
        .expect("claim")
        .is_empty());
    let late = s
        .claim(&me(), 1_000, 1_000, 10, vec![])
        .await
        .expect("claim");
    assert_eq!(keys(&late), ["late"], "due at exactly next_at_ms");
}

async fn an_expired_lease_is_claimed_again_and_the_old_attempt_cannot_finish<S: Store + Outbox>(
    s: Arc<S>,
) {
    s.enqueue(vec![action("a", "didit.update_status", "s1", 100)])
        .await
        .expect("enqueue");
    let first = s.claim(&me(), 500, 100, 10, vec![]).await.expect("claim");
    assert_eq!(first.len(), 1);
    let id = first[0].id.clone();
    assert!(
        s.claim(&me(), 599, 100, 10, vec![])
            .await
            .expect("claim")
            .is_empty(),
        "held until now + lease"
    );
    let second = s.claim(&me(), 600, 100, 10, vec![]).await.expect("claim");
    assert_eq!(keys(&second), ["a"], "an expired lease is claimed again");
    assert_eq!(second[0].attempts, 2);
    assert!(
        !s.finish(&id, 1, Finish::Done(json!({"by": 1})), 610)
            .await
            .expect("finish"),
        "the first attempt no longer holds the action"
    );
    let held = s.get_action(&id).await.expect("get").expect("action");
    assert_eq!(
        held.state,
        ActionState::Running,
        "a refused finish writes nothing"
    );
    assert_eq!(held.result, None);
    assert!(s
        .finish(&id, 2, Finish::Done(json!({"by": 2})), 620)
        .await
        .expect("finish"));
    let done = s.get_action(&id).await.expect("get").expect("action");
    assert_eq!(done.state, ActionState::Done);
    assert_eq!(done.result, Some(json!({"by": 2})));
    assert!(
        !s.finish(&id, 2, Finish::Dead("late".into()), 630)
            .await
            .expect("finish"),
        "a finished action cannot be finished again"
    );
    assert_eq!(
        s.get_action(&id).await.expect("get").expect("action").state,
        ActionState::Done
    );
    assert!(!s
        .finish("act_unknown", 1, Finish::Done(json!({})), 640)
        .await
        .expect("finish unknown"));
    assert!(
        s.claim(&me(), 10_000, 100, 10, vec![])
            .await
            .expect("claim")
            .is_empty(),
        "a done action is never claimed again"
    );
}

async fn finish_records_each_ending<S: Store + Outbox>(s: Arc<S>) {
    s.enqueue(vec![
        action("retry", "didit.update_status", "s1", 100),
        action("skip", "didit.update_status", "s2", 101),
        action("dead", "didit.blocklist", "s3", 102),
    ])
    .await
    .expect("enqueue");
    let claimed = s.claim(&me(), 200, 1_000, 10, vec![]).await.expect("claim");
    assert_eq!(claimed.len(), 3);
    let id = |key: &str| {
        claimed
            .iter()
            .find(|a| a.idempotency_key == key)
            .map(|a| a.id.clone())
            .expect("claimed")
    };
    let retry = id("retry");
    assert!(s
        .finish(
            &retry,
            1,
            Finish::Retry {
                error: "503 from the endpoint".into(),
                at_ms: 5_000
            },
            300
        )
        .await
        .expect("finish"));
    let r = s.get_action(&retry).await.expect("get").expect("action");
    assert_eq!(r.state, ActionState::Pending);
    assert_eq!(r.next_at_ms, 5_000);
    assert_eq!(r.last_error.as_deref(), Some("503 from the endpoint"));
    assert_eq!(r.updated_at_ms, 300);
    assert!(s
        .finish(
            &id("skip"),
            1,
            Finish::Skipped("already in effect".into()),
            301
        )
        .await
        .expect("finish"));
    let k = s
        .get_action(&id("skip"))
        .await
        .expect("get")
        .expect("action");
    assert_eq!(k.state, ActionState::Skipped);
    assert_eq!(k.last_error.as_deref(), Some("already in effect"));
    assert!(s
        .finish(&id("dead"), 1, Finish::Dead("gave up".into()), 302)
        .await
        .expect("finish"));
    let d = s
        .get_action(&id("dead"))
        .await
        .expect("get")
        .expect("action");
    assert_eq!(d.state, ActionState::Dead);
    assert_eq!(d.last_error.as_deref(), Some("gave up"));

    assert!(
        s.claim(&me(), 4_999, 1_000, 10, vec![])
            .await
            .expect("claim")
            .is_empty(),
        "a retry waits for its time; skipped and dead actions are never claimed"
    );
    let again = s
        .claim(&me(), 5_000, 1_000, 10, vec![])
        .await
        .expect("claim");
    assert_eq!(keys(&again), ["retry"]);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(
        again[0].last_error.as_deref(),
        Some("503 from the endpoint"),
        "the last error is kept until another replaces it"
    );
}

async fn retry_action_requeues_only_dead_or_skipped_actions<S: Store + Outbox>(s: Arc<S>) {
    s.enqueue(vec![
        action("dead", "didit.update_status", "s1", 100),
        action("skipped", "didit.update_status", "s2", 101),
        action("pending", "didit.update_status", "s3", 9_000),
    ])
    .await
    .expect("enqueue");
    let claimed = s.claim(&me(), 200, 1_000, 2, vec![]).await.expect("claim");
    assert_eq!(keys(&claimed), ["dead", "skipped"]);
    // Attempts used up: two more claims of "dead" before it dies.
    let dead = claimed[0].id.clone();
    assert!(s
        .finish(
            &dead,
            1,
            Finish::Retry {
                error: "e".into(),
                at_ms: 300
            },
            250
        )
        .await
        .expect("finish"));
    let again = s.claim(&me(), 300, 1_000, 10, vec![]).await.expect("claim");
    assert_eq!(keys(&again), ["dead"]);
    assert!(s
        .finish(&dead, 2, Finish::Dead("gave up".into()), 310)
        .await
        .expect("finish"));
    let skipped = claimed[1].id.clone();
    assert!(s
        .finish(&skipped, 1, Finish::Skipped("not needed".into()), 320)
        .await
        .expect("finish"));

    let (rec, changed) = s
        .retry_action(&dead, 1_000)
        .await
        .expect("retry")
        .expect("exists");
    assert!(changed);
    assert_eq!(rec.state, ActionState::Pending);
    assert_eq!(rec.attempts, 0, "a fresh attempt budget");
    assert_eq!(rec.next_at_ms, 1_000, "due now");
    assert_eq!(s.get_action(&dead).await.expect("get"), Some(rec.clone()));
    let (rec, changed) = s
        .retry_action(&skipped, 1_000)
        .await
        .expect("retry")
        .expect("exists");
    assert!(changed);
    assert_eq!(rec.state, ActionState::Pending);

    let pending = by_key(&*s, "pending").await;
    let (unchanged, changed) = s
        .retry_action(&pending.id, 1_000)
        .await
        .expect("retry")
        .expect("exists");
    assert!(!changed, "a pending action is not retried");
    assert_eq!(unchanged, pending, "and is returned unchanged");
    assert_eq!(
        s.retry_action(&dead, 1_001)
            .await
            .expect("retry")
            .map(|(_, c)| c),
        Some(false),
        "retrying twice changes it once"
    );
    assert!(s
        .retry_action("act_unknown", 1_000)
        .await
        .expect("retry")
        .is_none());

    let due = s
        .claim(&me(), 1_000, 1_000, 10, vec![])
        .await
        .expect("claim");
    assert_eq!(
        keys(&due),
        ["dead", "skipped"],
        "retried actions are claimed again"
    );
    assert!(due.iter().all(|a| a.attempts == 1));
}

async fn release_running_hands_every_claim_back<S: Store + Outbox>(s: Arc<S>) {
    s.enqueue(vec![
        action("a", "didit.update_status", "s1", 100),
        action("b", "operator.webhook", "s2", 101),
        action("c", "operator.webhook", "s3", 5_000),
    ])
    .await
    .expect("enqueue");
    assert_eq!(
        s.claim(&me(), 200, 60_000, 10, vec![])
            .await
            .expect("claim")
            .len(),
        2
    );
    assert_eq!(s.release_running(300).await.expect("release"), 2);
    for key in ["a", "b"] {
        let a = by_key(&*s, key).await;
        assert_eq!(a.state, ActionState::Pending, "{key} is handed back");
        assert_eq!(a.next_at_ms, 300, "{key} is due at once");
    }
    assert_eq!(
        by_key(&*s, "c").await.next_at_ms,
        5_000,
        "an action no worker held keeps its time"
    );
    assert_eq!(s.release_running(301).await.expect("release"), 0);
    let again = s
        .claim(&me(), 300, 60_000, 10, vec![])
        .await
        .expect("claim");
    assert_eq!(
        keys(&again),
        ["a", "b"],
        "released actions are claimed before their lease ran out"
    );
    assert!(again.iter().all(|a| a.attempts == 2));
}

async fn list_actions_filters_and_pages_newest_first<S: Store + Outbox>(s: Arc<S>) {
    let mut all = Vec::new();
    for i in 0..9i64 {
        let kind = if i % 3 == 0 {
            "operator.webhook"
        } else {
            "didit.update_status"
        };
        all.push(action(
            &format!("k{i}"),
            kind,
            &format!("s{}", i % 2),
            100 + i,
        ));
    }
    // One at a time, so that insertion order is the order of creation.
    for a in all {
        s.enqueue(vec![a]).await.expect("enqueue");
    }
    let q = |f: &dyn Fn(&mut ActionQuery)| {
        let mut q = ActionQuery {
            limit: 100,
            ..ActionQuery::default()
        };
        f(&mut q);
        q
    };
    let list = |q: ActionQuery| {
        let s = Arc::clone(&s);
        async move { s.list_actions(q).await.expect("list") }
    };
    let everything = list(q(&|_| {})).await;
    assert_eq!(
        keys(&everything),
        ["k8", "k7", "k6", "k5", "k4", "k3", "k2", "k1", "k0"]
    );
    assert!(
        everything.windows(2).all(|w| w[0].seq > w[1].seq),
        "seq descends"
    );

    // Pages by before_seq walk the same order without overlap.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = list(q(&|q| {
            q.limit = 4;
            q.before_seq = before;
        }))
        .await;
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        paged.extend(page);
    }
    assert_eq!(paged, everything);

    let webhooks = list(q(&|q| q.kind = Some("operator.webhook".into()))).await;
    assert_eq!(keys(&webhooks), ["k6", "k3", "k0"]);
    let s1 = list(q(&|q| q.session_id = Some("s1".into()))).await;
    assert_eq!(keys(&s1), ["k7", "k5", "k3", "k1"]);
    let window = list(q(&|q| {
        q.created_from_ms = Some(102);
        q.created_until_ms = Some(105);
    }))
    .await;
    assert_eq!(
        keys(&window),
        ["k4", "k3", "k2"],
        "from inclusive, until exclusive"
    );
    let both = list(q(&|q| {
        q.kind = Some("didit.update_status".into());
        q.session_id = Some("s0".into());
    }))
    .await;
    assert_eq!(keys(&both), ["k8", "k4", "k2"]);

    s.claim(&me(), 10_000, 1_000, 2, vec![])
        .await
        .expect("claim");
    let running = list(q(&|q| q.state = Some(ActionState::Running))).await;
    assert_eq!(keys(&running), ["k1", "k0"]);
    let pending = list(q(&|q| q.state = Some(ActionState::Pending))).await;
    assert_eq!(pending.len(), 7);
    assert!(list(q(&|q| q.limit = 0)).await.is_empty());
    assert!(list(q(&|q| q.session_id = Some("nobody".into())))
        .await
        .is_empty());
}

async fn counts_and_backlog_follow_states<S: Store + Outbox>(s: Arc<S>) {
    assert!(s.action_counts().await.expect("counts").is_empty());
    assert!(s.backlog().await.expect("backlog").is_empty());
    s.enqueue(vec![
        action("a", "didit.update_status", "s1", 100),
        action("b", "didit.update_status", "s2", 101),
        action("c", "didit.update_status", "s3", 102),
        action("d", "operator.webhook", "s4", 103),
    ])
    .await
    .expect("enqueue");
    let claimed = s.claim(&me(), 200, 1_000, 2, vec![]).await.expect("claim");
    assert_eq!(keys(&claimed), ["a", "b"]);
    assert!(s
        .finish(&claimed[0].id, 1, Finish::Done(json!({})), 300)
        .await
        .expect("finish"));
    let counts = s.action_counts().await.expect("counts");
    let expected: BTreeMap<(String, String), u64> = [
        (("didit.update_status", "done"), 1),
        (("didit.update_status", "running"), 1),
        (("didit.update_status", "pending"), 1),
        (("operator.webhook", "pending"), 1),
    ]
    .into_iter()
    .map(|((k, st), n)| ((k.to_owned(), st.to_owned()), n))
    .collect();
    assert_eq!(counts, expected, "per kind and state");
    let backlog = s.backlog().await.expect("backlog");
    let expected: BTreeMap<String, u64> = [
        ("didit.update_status".to_owned(), 2),
        ("operator.webhook".to_owned(), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(backlog, expected, "pending and running, not done");
}

fn step_up(id: &str, original: &str, state: &str, requested: i64, expires: i64) -> StepUpRecord {
    StepUpRecord {
        step_up_session_id: id.to_owned(),
        original_session_id: original.to_owned(),
        checks: vec!["liveness".into(), "poa".into()],
        state: state.to_owned(),
        url: None,
        workflow_id: Some("wf".into()),
        requested_at_ms: requested,
        expires_at_ms: expires,
        finished_at_ms: None,
    }
}

async fn step_ups_upsert_and_come_due<S: Store + Outbox>(s: Arc<S>) {
    assert!(s.step_ups_of("orig").await.expect("of").is_empty());
    let batch = ProjectionBatch {
        step_ups: vec![
            step_up("su2", "orig", "requested", 200, 1_000),
            step_up("su1", "orig", "requested", 100, 2_000),
            step_up("other", "orig2", "in_progress", 150, 500),
        ],
        ..ProjectionBatch::default()
    };
    s.commit("p", 0, 1, batch).await.expect("commit");
    let of = s.step_ups_of("orig").await.expect("of");
    let ids: Vec<&str> = of.iter().map(|r| r.step_up_session_id.as_str()).collect();
    assert_eq!(ids, ["su1", "su2"], "oldest request first");
    assert_eq!(
        of[1],
        step_up("su2", "orig", "requested", 200, 1_000),
        "round-trips"
    );

    let due = |now| {
        let s = Arc::clone(&s);
        async move {
            s.step_ups_due(now)
                .await
                .expect("due")
                .into_iter()
                .map(|r| r.step_up_session_id)
                .collect::<Vec<_>>()
        }
    };
    assert!(due(499).await.is_empty());
    assert_eq!(
        due(1_000).await,
        ["other", "su2"],
        "open and run out, in_progress too"
    );

    // The step-up session got its URL; later it completed.
    let mut with_url = step_up("su2", "orig", "in_progress", 200, 1_000);
    with_url.url = Some("https://verify.example/su2".into());
    let mut completed = step_up("other", "orig2", "completed", 150, 500);
    completed.finished_at_ms = Some(600);
    s.commit(
        "p",
        1,
        2,
        ProjectionBatch {
            step_ups: vec![with_url, completed],
            ..ProjectionBatch::default()
        },
    )
    .await
    .expect("commit");
    // A later write without the URL keeps it.
    s.commit(
        "p",
        2,
        3,
        ProjectionBatch {
            step_ups: vec![step_up("su2", "orig", "in_progress", 200, 1_000)],
            ..ProjectionBatch::default()
        },
    )
    .await
    .expect("commit");
    let su2 = s.step_ups_of("orig").await.expect("of").remove(1);
    assert_eq!(su2.state, "in_progress");
    assert_eq!(
        su2.url.as_deref(),
        Some("https://verify.example/su2"),
        "a known URL is kept"
    );
    let other = s.step_ups_of("orig2").await.expect("of").remove(0);
    assert_eq!(other.state, "completed");
    assert_eq!(other.finished_at_ms, Some(600));
    assert_eq!(
        due(10_000).await,
        ["su1", "su2"],
        "a completed step-up is not due"
    );
    assert!(s.step_ups_of("nobody").await.expect("of").is_empty());
}

async fn an_endpoint_is_disabled_after_consecutive_failures<S: Store + Outbox>(s: Arc<S>) {
    let url = "https://hooks.example/kycd";
    let fresh = s.endpoint(url).await.expect("endpoint");
    assert_eq!(fresh.url, url);
    assert_eq!(fresh.consecutive_failures, 0);
    assert!(!fresh.disabled());
    assert_eq!(fresh.last_success_ms, None);

    let (st, disabled) = s
        .record_endpoint(url, Some("timeout".into()), 10, 3)
        .await
        .expect("record");
    assert_eq!((st.consecutive_failures, disabled), (1, false));
    assert_eq!(st.last_failure_ms, Some(10));
    assert_eq!(st.last_error.as_deref(), Some("timeout"));
    let (st, _) = s.record_endpoint(url, None, 20, 3).await.expect("record");
    assert_eq!(st.consecutive_failures, 0, "a success resets the count");
    assert_eq!(st.last_success_ms, Some(20));
    for (n, at) in [(1, 30), (2, 40)] {
        let (st, disabled) = s
            .record_endpoint(url, Some(format!("500 #{n}")), at, 3)
            .await
            .expect("record");
        assert_eq!((st.consecutive_failures, disabled), (n, false));
    }
    let (st, disabled) = s
        .record_endpoint(url, Some("500 #3".into()), 50, 3)
        .await
        .expect("record");
    assert!(disabled, "the third consecutive failure disables");
    assert_eq!(st.disabled_at_ms, Some(50));
    let (st, disabled) = s
        .record_endpoint(url, Some("500 #4".into()), 60, 3)
        .await
        .expect("record");
    assert!(!disabled, "only the call that disabled it says so");
    assert_eq!(
        st.disabled_at_ms,
        Some(50),
        "disabled when it was first disabled"
    );
    assert_eq!(st.consecutive_failures, 4);
    assert_eq!(s.endpoint(url).await.expect("endpoint"), st);
    assert!(
        !s.endpoint("https://other.example")
            .await
            .expect("endpoint")
            .disabled(),
        "per URL"
    );

    let enabled = s.enable_endpoint(url).await.expect("enable");
    assert!(!enabled.disabled());
    assert_eq!(enabled.consecutive_failures, 0);
    assert_eq!(s.endpoint(url).await.expect("endpoint"), enabled);
    let (st, disabled) = s
        .record_endpoint(url, Some("500".into()), 70, 3)
        .await
        .expect("record");
    assert_eq!(
        (st.consecutive_failures, disabled),
        (1, false),
        "counted from zero again"
    );
    let never_used = s
        .enable_endpoint("https://new.example")
        .await
        .expect("enable");
    assert!(!never_used.disabled());
}

/// N workers claim concurrently over M due actions: each action goes to
/// exactly one of them, and while it is held (running) nobody else gets
/// it; finished actions are not handed out again.
async fn concurrent_claimers_get_each_action_exactly_once<S: Store + Outbox>(s: Arc<S>) {
    const ACTIONS: usize = 200;
    const WORKERS: usize = 8;
    let actions: Vec<NewAction> = (0..ACTIONS)
        .map(|i| {
            action(
                &format!("k{i}"),
                "didit.update_status",
                &format!("s{i}"),
                i as i64,
            )
        })
        .collect();
    s.enqueue(actions).await.expect("enqueue");

    // Round one: everyone claims small batches concurrently and holds them.
    let mut tasks = JoinSet::new();
    for _ in 0..WORKERS {
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = s
                    .claim(&me(), 10_000, 60_000, 3, vec![])
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch);
                tokio::task::yield_now().await;
            }
        });
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut worker = 0;
    while let Some(joined) = tasks.join_next().await {
        let mine = joined.expect("claimer task");
        for a in mine {
            assert_eq!(a.state, ActionState::Running);
            assert_eq!(a.attempts, 1, "claimed once: {}", a.idempotency_key);
            if let Some(other) = owner.insert(a.id.clone(), worker) {
                panic!(
                    "{} handed to workers {other} and {worker}",
                    a.idempotency_key
                );
            }
        }
        worker += 1;
    }
    assert_eq!(owner.len(), ACTIONS, "every due action is claimed");
    assert!(
        s.claim(&me(), 10_000, 60_000, 1_000, vec![])
            .await
            .expect("claim")
            .is_empty(),
        "held actions are not handed out again"
    );

    // Round two: the workers finish their actions concurrently, claiming
    // between finishes; nothing finished or still held is handed out.
    let ids: Vec<String> = owner.keys().cloned().collect();
    let mut tasks = JoinSet::new();
    for chunk in ids.chunks(ACTIONS / WORKERS) {
        let s = Arc::clone(&s);
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            let mut stolen = Vec::new();
            for id in chunk {
                assert!(s
                    .finish(&id, 1, Finish::Done(json!({})), 11_000)
                    .await
                    .expect("finish"));
                stolen.extend(
                    s.claim(&me(), 11_000, 60_000, 5, vec![])
                        .await
                        .expect("claim"),
                );
            }
            stolen
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let stolen = joined.expect("finisher task");
        assert!(
            stolen.is_empty(),
            "handed out while held or after done: {:?}",
            keys(&stolen)
        );
    }
    let counts = s.action_counts().await.expect("counts");
    assert_eq!(
        counts.get(&("didit.update_status".to_owned(), "done".to_owned())),
        Some(&(ACTIONS as u64))
    );
}

async fn claim_keys<S: Outbox + ?Sized>(s: &S, now: i64) -> Vec<String> {
    s.claim(&me(), now, 1_000, 10, vec![])
        .await
        .expect("claim")
        .into_iter()
        .map(|a| a.idempotency_key)
        .collect()
}

async fn finish_key<S: Outbox + ?Sized>(s: &S, key: &str, finish: Finish, now: i64) {
    let a = by_key(s, key).await;
    assert!(
        s.finish(&a.id, a.attempts, finish, now)
            .await
            .expect("finish"),
        "{key} was held"
    );
}

/// A session's Didit actions (write-backs, a blocklist) run one at a time
/// in the order they were enqueued: a later one waits while an earlier one
/// is running, or pending even when not yet due (backing off); an earlier
/// one that is done, skipped or dead no longer holds the session.
async fn a_session_runs_its_didit_actions_one_at_a_time_in_order<S: Store + Outbox>(s: Arc<S>) {
    s.enqueue(vec![
        action("s1-status", "didit.update_status", "s1", 100),
        action("s1-block", "didit.blocklist", "s1", 100),
        action("s2-status", "didit.update_status", "s2", 100),
        action("s1-review", "didit.update_status", "s1", 150),
        action("s1-later", "didit.update_status", "s1", 160),
    ])
    .await
    .expect("enqueue");
    let first = s.get_action(&by_key(&*s, "s1-block").await.id).await;
    assert_eq!(
        first.expect("get").and_then(|a| a.lane).as_deref(),
        Some("session:s1"),
        "a Didit action's lane is its session"
    );
    assert_eq!(
        claim_keys(&*s, 200).await,
        ["s1-status", "s2-status"],
        "one action per session, the session's oldest"
    );
    assert!(
        claim_keys(&*s, 200).await.is_empty(),
        "nothing of s1 while its first action runs"
    );
    finish_key(&*s, "s2-status", Finish::Done(json!({})), 250).await;
    finish_key(
        &*s,
        "s1-status",
        Finish::Retry {
            error: "503".into(),
            at_ms: 5_000,
        },
        300,
    )
    .await;
    assert!(
        claim_keys(&*s, 400).await.is_empty(),
        "a write-back backing off still holds its session: order over speed"
    );
    assert!(
        claim_keys(&*s, 4_999).await.is_empty(),
        "nor just before its retry is due"
    );
    assert_eq!(
        claim_keys(&*s, 5_000).await,
        ["s1-status"],
        "the retry comes first when due"
    );
    finish_key(&*s, "s1-status", Finish::Dead("gave up".into()), 5_100).await;
    assert_eq!(
        claim_keys(&*s, 5_200).await,
        ["s1-block"],
        "a dead action does not hold its session for ever"
    );
    assert!(
        claim_keys(&*s, 5_300).await.is_empty(),
        "s1-review waits for the blocklist"
    );
    assert_eq!(
        claim_keys(&*s, 6_200).await,
        ["s1-block"],
        "an expired lease is claimed again, still before later actions"
    );
    finish_key(&*s, "s1-block", Finish::Done(json!({})), 6_300).await;
    assert_eq!(claim_keys(&*s, 6_300).await, ["s1-review"]);
    finish_key(&*s, "s1-review", Finish::Skipped("stale".into()), 6_400).await;
    assert_eq!(
        claim_keys(&*s, 6_400).await,
        ["s1-later"],
        "a skipped action does not hold its session"
    );
    // A redriven dead action is unfinished again: it does not overtake
    // what already ran, but holds back what comes after it.
    s.enqueue(vec![action("s1-last", "didit.update_status", "s1", 6_500)])
        .await
        .expect("enqueue");
    finish_key(&*s, "s1-later", Finish::Done(json!({})), 6_500).await;
    let dead = by_key(&*s, "s1-status").await;
    s.retry_action(&dead.id, 6_600).await.expect("retry");
    assert_eq!(claim_keys(&*s, 6_600).await, ["s1-status"]);
    assert!(claim_keys(&*s, 6_600).await.is_empty());
}

/// Operator webhooks to the endpoint go one at a time, oldest due first,
/// whichever sessions they are about, and never wait for Didit actions; a
/// message backing off does not hold back the next.
async fn operator_webhooks_to_the_endpoint_go_one_at_a_time<S: Store + Outbox>(s: Arc<S>) {
    s.enqueue(vec![
        action("w1", "operator.webhook", "s1", 100),
        action("w2", "operator.webhook", "s2", 100),
        action("d1", "didit.update_status", "s1", 100),
        action("w3", "operator.webhook", "s1", 110),
    ])
    .await
    .expect("enqueue");
    assert_eq!(
        by_key(&*s, "w2").await.lane.as_deref(),
        Some("endpoint"),
        "a webhook's lane is the endpoint"
    );
    assert_eq!(
        claim_keys(&*s, 200).await,
        ["w1", "d1"],
        "one webhook in flight; Didit lanes are apart"
    );
    finish_key(&*s, "d1", Finish::Done(json!({})), 250).await;
    assert!(
        claim_keys(&*s, 260).await.is_empty(),
        "nothing while a webhook runs"
    );
    finish_key(
        &*s,
        "w1",
        Finish::Retry {
            error: "timeout".into(),
            at_ms: 1_000,
        },
        300,
    )
    .await;
    assert_eq!(
        claim_keys(&*s, 400).await,
        ["w2"],
        "a message backing off does not hold back the next"
    );
    assert!(
        claim_keys(&*s, 1_000).await.is_empty(),
        "w1, due again, waits while w2 runs"
    );
    finish_key(&*s, "w2", Finish::Done(json!({})), 1_100).await;
    assert_eq!(claim_keys(&*s, 1_100).await, ["w1"], "oldest due first");
    finish_key(&*s, "w1", Finish::Dead("blocked".into()), 1_200).await;
    assert_eq!(claim_keys(&*s, 1_200).await, ["w3"]);
}

/// A claim says who holds it; a restarted instance hands back the claims
/// of its earlier runs at once, never another instance's nor a later run's
/// of its own id (a newer process that replaced it).
async fn a_claim_records_its_holder_and_a_restart_hands_back_only_its_own<S: Store + Outbox>(
    s: Arc<S>,
) {
    let (a1, a2, a3, b1) = (
        Holder::new("kycd-a", 1),
        Holder::new("kycd-a", 2),
        Holder::new("kycd-a", 3),
        Holder::new("kycd-b", 1),
    );
    s.enqueue(vec![
        action("mine-old", "didit.update_status", "s1", 100),
        action("theirs", "didit.update_status", "s2", 100),
        action("mine-newer", "didit.update_status", "s3", 100),
        action("free", "didit.update_status", "s4", 100),
    ])
    .await
    .expect("enqueue");
    for (holder, key) in [(&a1, "mine-old"), (&b1, "theirs"), (&a3, "mine-newer")] {
        let got = s
            .claim(holder, 200, 60_000, 1, vec![])
            .await
            .expect("claim");
        assert_eq!(keys(&got), [key]);
        assert_eq!(
            got[0].claimed_by.as_ref(),
            Some(holder),
            "the claim says who"
        );
        assert_eq!(
            by_key(&*s, key).await.claimed_by.as_ref(),
            Some(holder),
            "and is stored"
        );
    }
    assert_eq!(by_key(&*s, "free").await.claimed_by, None);

    // kycd-a starts again as epoch 2.
    assert_eq!(
        s.release_claims_of(&a2, 300).await.expect("release"),
        1,
        "only kycd-a's epoch-1 claim"
    );
    let released = by_key(&*s, "mine-old").await;
    assert_eq!(released.state, ActionState::Pending);
    assert_eq!(released.next_at_ms, 300, "due at once");
    assert_eq!(released.claimed_by, None);
    for (key, holder) in [("theirs", &b1), ("mine-newer", &a3)] {
        let kept = by_key(&*s, key).await;
        assert_eq!(kept.state, ActionState::Running, "{key} is still held");
        assert_eq!(kept.claimed_by.as_ref(), Some(holder));
    }
    let again = s.claim(&a2, 300, 60_000, 10, vec![]).await.expect("claim");
    assert_eq!(
        keys(&again),
        ["free", "mine-old"],
        "the handed-back claim runs again at once; the others wait for their lease"
    );
    assert_eq!(
        s.release_claims_of(&Holder::new("kycd-c", 9), 400)
            .await
            .expect("release"),
        0
    );
    // A finish clears the holder.
    let a = by_key(&*s, "theirs").await;
    assert!(s
        .finish(&a.id, a.attempts, Finish::Done(json!({})), 500)
        .await
        .expect("finish"));
    assert_eq!(by_key(&*s, "theirs").await.claimed_by, None);
}

async fn concurrent_claimers_keep_every_lane_in_order_one_store<S: Store + Outbox>(s: Arc<S>) {
    let stores = (0..8).map(|_| Arc::clone(&s)).collect();
    concurrent_claimers_keep_every_lane_in_order(stores).await;
}

/// Many claimers at once over the same outbox (`stores` may be one store
/// shared, or several on separate connections: separate instances), over
/// sessions of several Didit actions each, all due: no two actions of one
/// session are ever held at once, and each session's actions run in `seq`
/// order. Every
/// action runs once.
pub async fn concurrent_claimers_keep_every_lane_in_order<S: Outbox + ?Sized>(stores: Vec<Arc<S>>) {
    const SESSIONS: usize = 24;
    const PER_SESSION: usize = 6;
    let Some(first) = stores.first() else { return };
    let mut actions = Vec::new();
    for round in 0..PER_SESSION {
        for i in 0..SESSIONS {
            let kind = if round % 2 == 0 {
                "didit.update_status"
            } else {
                "didit.blocklist"
            };
            actions.push(action(
                &format!("s{i}-{round}"),
                kind,
                &format!("s{i}"),
                (round * SESSIONS + i) as i64,
            ));
        }
    }
    // One at a time: seq is each lane's order of rounds.
    for a in actions {
        first.enqueue(vec![a]).await.expect("enqueue");
    }
    let total = PER_SESSION * SESSIONS;
    // Per lane: what is held now (by the tracking, not the store), and the
    // seqs run so far in order.
    #[derive(Default)]
    struct Lanes {
        held: HashMap<String, String>,
        ran: HashMap<String, Vec<u64>>,
        count: usize,
    }
    let lanes = Arc::new(std::sync::Mutex::new(Lanes::default()));
    let mut tasks = JoinSet::new();
    for (w, s) in stores.into_iter().enumerate() {
        let lanes = Arc::clone(&lanes);
        tasks.spawn(async move {
            let holder = Holder::new(format!("claimer-{w}"), 1);
            loop {
                if lanes.lock().expect("lanes").count == total {
                    return;
                }
                let got = s
                    .claim(&holder, 100_000, 600_000, 4, vec![])
                    .await
                    .expect("claim");
                for a in &got {
                    let lane = a.lane.clone().expect("every action here has a lane");
                    let mut l = lanes.lock().expect("lanes");
                    if let Some(other) = l.held.insert(lane.clone(), a.idempotency_key.clone()) {
                        panic!(
                            "{} claimed while {other} of the same lane is held",
                            a.idempotency_key
                        );
                    }
                }
                tokio::task::yield_now().await;
                for a in got {
                    let lane = a.lane.clone().expect("lane");
                    // Released in the tracking before the store, so the
                    // next of the lane can only be claimed after this.
                    {
                        let mut l = lanes.lock().expect("lanes");
                        l.held.remove(&lane);
                        l.ran.entry(lane).or_default().push(a.seq);
                        l.count += 1;
                    }
                    assert!(s
                        .finish(&a.id, a.attempts, Finish::Done(json!({})), 100_001)
                        .await
                        .expect("finish"));
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("claimer task");
    }
    let l = lanes.lock().expect("lanes");
    assert_eq!(l.count, total, "every action ran once");
    assert_eq!(l.ran.len(), SESSIONS);
    for (lane, seqs) in &l.ran {
        assert_eq!(seqs.len(), PER_SESSION, "{lane}: each action once");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{lane} ran out of order: {seqs:?}"
        );
    }
}
