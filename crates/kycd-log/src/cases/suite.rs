//! The conformance suite every [`Cases`] backend runs.
//!
//! [`run_cases_suite`] takes a function that makes a fresh, empty backend;
//! each check gets its own. The backend is also a [`Store`]: cases come
//! from the sessions and decisions a projection commits. The checks use
//! the traits only; they never sleep to wait for work, and each runs under
//! a deadline.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;

use super::{CasePage, CaseQuery, CaseSort, Cases};
use crate::store::{DecisionRecord, IdentityLink, ProjectionBatch, SessionRecord, Store};
use crate::suite::run_checks;

/// Run every check, each against a fresh backend from `make`.
pub async fn run_cases_suite<S, F, Fut>(make: F)
where
    S: Store + Cases,
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<S>>,
{
    run_checks!(
        "cases",
        make,
        [
            the_queue_sorts_filters_and_counts_open_cases,
            the_queue_pages_with_a_total,
            assignments_filter_the_queue_and_a_reviewer_decision_ends_them,
            decisions_over_time_count_active_decisions_per_bucket,
            the_review_backlog_is_the_age_of_each_open_review,
            linked_subjects_are_bounded_per_kind_newest_first,
        ]
    );
}

/// The time a session numbered `seq` was decided at (Unix ms).
pub fn decided_at(seq: u64) -> i64 {
    1_000_000 + seq as i64 * 1_000
}

/// A session decided `outcome` with `score` for `rule` by policy `by`
/// (`"reviewer"` for a person's decision).
pub fn decided_session(
    seq: u64,
    id: &str,
    outcome: &str,
    score: f64,
    rule: &str,
    by: &str,
) -> SessionRecord {
    SessionRecord {
        seq,
        session_id: id.into(),
        vendor_data: Some(format!("subject-{id}")),
        status: "In Review".into(),
        workflow_id: None,
        created_at_ms: seq as i64,
        updated_at_ms: seq as i64,
        doc: json!({"decision": {
            "id": format!("dec_{id}"), "outcome": outcome, "score": score,
            "reasons": [{"rule": rule, "text": "why"}], "policy_version": by,
            "decided_at": kycd_core::when::format_millis(decided_at(seq)),
        }}),
    }
}

async fn with_sessions<S: Store + Cases>(s: &S, sessions: Vec<SessionRecord>) {
    let n = sessions.len() as u64;
    s.commit_sessions("p", 0, n, sessions)
        .await
        .expect("commit");
}

fn query(f: impl FnOnce(&mut CaseQuery)) -> CaseQuery {
    let mut q = CaseQuery {
        limit: 10,
        ..CaseQuery::default()
    };
    f(&mut q);
    q
}

fn ids(page: &CasePage) -> Vec<&str> {
    page.cases.iter().map(|c| c.session_id.as_str()).collect()
}

fn counted(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

async fn the_queue_sorts_filters_and_counts_open_cases<S: Store + Cases>(s: Arc<S>) {
    let empty = s.queue(query(|_| {})).await.expect("queue");
    assert_eq!(
        empty,
        CasePage::default(),
        "an empty store has an empty queue"
    );
    with_sessions(
        &*s,
        vec![
            decided_session(1, "old", "review", 10.0, "aml_hit", "v1"),
            decided_session(2, "risky", "review", 90.0, "face_weak", "v1"),
            decided_session(3, "ok", "approve", 0.0, "clean", "v1"),
            decided_session(4, "gone", "decline", 80.0, "aml_hit", "v1"),
            decided_session(5, "also-risky", "review", 90.0, "aml_hit", "v1"),
            SessionRecord {
                doc: json!({"history": []}),
                ..decided_session(6, "undecided", "review", 0.0, "x", "v1")
            },
        ],
    )
    .await;
    let page = s.queue(query(|_| {})).await.expect("queue");
    assert_eq!(
        ids(&page),
        ["old", "risky", "also-risky"],
        "review by default, oldest first"
    );
    assert_eq!(page.total, 3);
    assert_eq!(page.oldest_ms, Some(decided_at(1)));
    let old = &page.cases[0];
    assert_eq!(old.subject.as_deref(), Some("subject-old"));
    assert_eq!(old.outcome, "review");
    assert_eq!(old.score, 10.0);
    assert_eq!(old.reasons, ["aml_hit"]);
    assert_eq!(old.decision_id, "dec_old");
    assert_eq!(old.decided_at_ms, decided_at(1));
    assert_eq!(old.didit_status, "In Review");
    assert_eq!(old.assignee, None);
    assert_eq!(
        page.by_outcome,
        counted(&[("review", 3), ("decline", 1)]),
        "approvals and undecided sessions are not cases"
    );
    assert_eq!(
        page.by_reason,
        counted(&[("aml_hit", 2), ("face_weak", 1)]),
        "within the outcome shown, most common first"
    );
    assert_eq!(page.by_assignee, counted(&[("", 3)]));

    let risk = s
        .queue(query(|q| q.sort = CaseSort::Risk))
        .await
        .expect("queue");
    assert_eq!(
        ids(&risk),
        ["risky", "also-risky", "old"],
        "highest score, then oldest"
    );
    let aml = s
        .queue(query(|q| q.reason = Some("aml_hit".into())))
        .await
        .expect("queue");
    assert_eq!(ids(&aml), ["old", "also-risky"]);
    assert_eq!(aml.total, 2);
    let declined = s
        .queue(query(|q| q.outcome = Some("decline".into())))
        .await
        .expect("queue");
    assert_eq!(ids(&declined), ["gone"]);
    assert_eq!(declined.by_reason, counted(&[("aml_hit", 1)]));
    assert_eq!(
        declined.by_outcome, page.by_outcome,
        "per outcome whatever the filters"
    );
    let none = s
        .queue(query(|q| q.reason = Some("no_such_rule".into())))
        .await
        .expect("queue");
    assert!(none.cases.is_empty());
    assert_eq!((none.total, none.oldest_ms), (0, None));

    // A new decision on a session replaces its case.
    s.commit_sessions(
        "p",
        6,
        7,
        vec![decided_session(1, "old", "decline", 70.0, "doc_fake", "v1")],
    )
    .await
    .expect("commit");
    let page = s.queue(query(|_| {})).await.expect("queue");
    assert_eq!(ids(&page), ["risky", "also-risky"]);
    assert_eq!(page.by_outcome, counted(&[("review", 2), ("decline", 2)]));
}

async fn the_queue_pages_with_a_total<S: Store + Cases>(s: Arc<S>) {
    let sessions = (1..=7)
        .map(|i| decided_session(i, &format!("c{i}"), "review", i as f64, "r", "v1"))
        .collect();
    with_sessions(&*s, sessions).await;
    let mut seen = Vec::new();
    for offset in [0, 3, 6, 9] {
        let page = s
            .queue(query(|q| {
                q.limit = 3;
                q.offset = offset;
            }))
            .await
            .expect("queue");
        assert_eq!(page.total, 7, "the total counts beyond the page");
        assert!(page.cases.len() <= 3);
        seen.extend(page.cases.into_iter().map(|c| c.session_id));
    }
    assert_eq!(
        seen,
        ["c1", "c2", "c3", "c4", "c5", "c6", "c7"],
        "pages concatenate"
    );
    let zero = s.queue(query(|q| q.limit = 0)).await.expect("queue");
    assert!(zero.cases.is_empty());
    assert_eq!(zero.total, 7);
}

async fn assignments_filter_the_queue_and_a_reviewer_decision_ends_them<S: Store + Cases>(
    s: Arc<S>,
) {
    with_sessions(
        &*s,
        vec![
            decided_session(1, "old", "review", 10.0, "aml_hit", "v1"),
            decided_session(2, "risky", "review", 90.0, "face_weak", "v1"),
            decided_session(3, "third", "review", 50.0, "face_weak", "v1"),
        ],
    )
    .await;
    assert_eq!(s.assignee("risky").await.expect("assignee"), None);
    assert!(s
        .assign("risky", Some("rita".into()), 5)
        .await
        .expect("assign"));
    assert!(s
        .assign("third", Some("rita".into()), 5)
        .await
        .expect("assign"));
    assert!(
        !s.assign("nope", Some("rita".into()), 5)
            .await
            .expect("assign"),
        "no such case"
    );
    assert_eq!(
        s.assignee("nope").await.expect("assignee"),
        None,
        "the refused assignment wrote nothing"
    );
    assert_eq!(
        s.assignee("risky").await.expect("assignee").as_deref(),
        Some("rita")
    );
    assert!(s
        .assign("third", Some("adam".into()), 6)
        .await
        .expect("reassign"));
    assert_eq!(
        s.assignee("third").await.expect("assignee").as_deref(),
        Some("adam")
    );

    let unassigned = s
        .queue(query(|q| q.assignee = Some(String::new())))
        .await
        .expect("queue");
    assert_eq!(ids(&unassigned), ["old"]);
    let ritas = s
        .queue(query(|q| q.assignee = Some("rita".into())))
        .await
        .expect("queue");
    assert_eq!(ids(&ritas), ["risky"]);
    assert_eq!(ritas.cases[0].assignee.as_deref(), Some("rita"));
    assert_eq!(
        ritas.by_assignee,
        counted(&[("", 1), ("adam", 1), ("rita", 1)]),
        "per assignee, whatever the assignee filter"
    );

    assert!(s.assign("third", None, 7).await.expect("release"));
    assert_eq!(s.assignee("third").await.expect("assignee"), None);

    // A reviewer decides: the case leaves the queue and its assignment goes.
    s.commit_sessions(
        "p",
        3,
        4,
        vec![decided_session(
            2, "risky", "approve", 0.0, "reviewer", "reviewer",
        )],
    )
    .await
    .expect("commit");
    let page = s.queue(query(|_| {})).await.expect("queue");
    assert_eq!(ids(&page), ["old", "third"]);
    assert_eq!(s.assignee("risky").await.expect("assignee"), None);
    let declined_by_reviewer = s
        .queue(query(|q| q.outcome = Some("decline".into())))
        .await
        .expect("queue");
    assert!(declined_by_reviewer.cases.is_empty());
}

fn decision(id: &str, offset: u64, outcome: &str, shadow: bool, at_ms: i64) -> DecisionRecord {
    DecisionRecord {
        id: id.to_owned(),
        event_offset: offset,
        session_id: format!("s{offset}"),
        subject: Some("u1".into()),
        policy_version: "v1".into(),
        shadow,
        outcome: outcome.to_owned(),
        score: 1.0,
        decided_at_ms: at_ms,
        decided_by: None,
        doc: json!({}),
    }
}

async fn decisions_over_time_count_active_decisions_per_bucket<S: Store + Cases>(s: Arc<S>) {
    assert!(s
        .decisions_over_time(0, 100)
        .await
        .expect("chart")
        .is_empty());
    let batch = ProjectionBatch {
        decisions: vec![
            decision("d1", 1, "approve", false, 1_000),
            decision("d2", 2, "approve", false, 1_099),
            decision("d3", 3, "decline", false, 1_050),
            decision("d4", 4, "approve", false, 1_100),
            decision("d5", 5, "approve", true, 1_010),
            decision("d6", 6, "review", false, 900),
        ],
        ..ProjectionBatch::default()
    };
    s.commit("p", 0, 6, batch).await.expect("commit");
    let mut chart = s.decisions_over_time(1_000, 100).await.expect("chart");
    chart.sort();
    assert_eq!(
        chart,
        [
            (1_000, "approve".to_owned(), 2),
            (1_000, "decline".to_owned(), 1),
            (1_100, "approve".to_owned(), 1),
        ],
        "active only, from from_ms, by bucket start and outcome"
    );
    let buckets: Vec<i64> = s
        .decisions_over_time(0, 100)
        .await
        .expect("chart")
        .iter()
        .map(|(b, _, _)| *b)
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "oldest bucket first: {buckets:?}"
    );
    assert!(buckets.contains(&900));
}

async fn the_review_backlog_is_the_age_of_each_open_review<S: Store + Cases>(s: Arc<S>) {
    assert!(s.review_backlog(0).await.expect("backlog").is_empty());
    with_sessions(
        &*s,
        vec![
            decided_session(1, "a", "review", 1.0, "r", "v1"),
            decided_session(2, "b", "review", 1.0, "r", "v1"),
            decided_session(3, "c", "decline", 1.0, "r", "v1"),
            decided_session(4, "d", "review", 1.0, "r", "reviewer"),
        ],
    )
    .await;
    let now = decided_at(10);
    let mut ages = s.review_backlog(now).await.expect("backlog");
    ages.sort();
    assert_eq!(
        ages,
        [now - decided_at(2), now - decided_at(1)],
        "open reviews only: not declines, not what a reviewer decided"
    );
}

async fn linked_subjects_are_bounded_per_kind_newest_first<S: Store + Cases>(s: Arc<S>) {
    assert!(s.linked("me", 0, 10).await.expect("linked").is_empty());
    let link = |kind: &str, value: &str, subject: &str, at: i64| IdentityLink {
        kind: kind.into(),
        value: value.into(),
        subject: subject.into(),
        offset: at as u64,
        at_ms: at,
    };
    let mut links = vec![
        link("ip", "carrier", "me", 1),
        link("document", "doc", "me", 1),
        link("document", "doc", "twin", 50),
        link("ip", "elsewhere", "stranger", 500),
    ];
    links.extend((0..10).map(|i| link("ip", "carrier", &format!("s{i}"), 100 + i)));
    // The twin also shares the carrier's IP, seen later.
    links.push(link("ip", "carrier", "twin", 300));
    s.commit(
        "p",
        0,
        1,
        ProjectionBatch {
            links,
            ..ProjectionBatch::default()
        },
    )
    .await
    .expect("commit");
    let linked = s.linked("me", 0, 3).await.expect("linked");
    assert_eq!(
        linked,
        [
            ("document".to_owned(), "twin".to_owned(), 50),
            ("ip".to_owned(), "twin".to_owned(), 300),
            ("ip".to_owned(), "s9".to_owned(), 109),
            ("ip".to_owned(), "s8".to_owned(), 108),
        ],
        "by kind, at most limit per kind, most recent first, never the subject itself"
    );
    let all = s.linked("me", 0, 100).await.expect("linked");
    assert_eq!(all.len(), 12, "every other subject once per kind");
    assert!(
        !all.iter().any(|(_, other, _)| other == "stranger"),
        "only shared values"
    );
    let recent = s.linked("me", 105, 100).await.expect("linked");
    let names: Vec<&str> = recent.iter().map(|(_, o, _)| o.as_str()).collect();
    assert_eq!(
        names,
        ["twin", "s9", "s8", "s7", "s6", "s5"],
        "the window applies"
    );
    assert!(s.linked("nobody", 0, 10).await.expect("linked").is_empty());
}
