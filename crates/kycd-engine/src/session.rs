//! The session state machine: how one delivery changes kycd's view of a
//! Didit session. Pure: no I/O, no clock; the projector feeds it events in
//! log order and stores what it returns.
//!
//! Didit may deliver twice and out of order (docs/didit-protocol.md 1.3), so every
//! delivery is **recorded** in the session's history, but only some
//! **move** it. The rules, in order:
//!
//! 1. The first delivery about a session creates it with that status.
//! 2. A delivery whose Didit `timestamp` is older than the one that set the
//!    current status is stale: recorded, not applied.
//! 3. A delivery whose status is backwards in the lifecycle from the current
//!    one ([`SessionStatus::is_backwards_from`]: a late `In Progress` after
//!    `Approved`) is recorded, not applied, whatever its timestamp. The one
//!    way back is `Resubmitted` → `In Progress`, a new attempt.
//! 4. Within [`REORDER_WINDOW_SECS`] of the current status, deliveries are
//!    ordered by Didit's usual transitions ([`usual_transition`]): a
//!    delivery whose status normally comes *before* the current one (an
//!    `In Review` arriving after the reviewer's `Declined`, stamped in the
//!    same or a later second because Didit stamps each attempt) is
//!    recorded, not applied. `Expired` follows only an unfinished session,
//!    so it never replaces a result. Pairs the transitions do not order
//!    resolve by timestamp, then log order, so the outcome is deterministic
//!    for a given log.
//! 5. Otherwise the status is applied.
//!
//! Didit's **decision** payload is the latest by timestamp among
//! deliveries that carry one, were authenticated beyond their envelope (a
//! Simple-signed body's `decision` is never trusted; the session is flagged
//! for an API fetch instead) and were applied: a delivery refused as stale
//! or backwards carries the results of a state the session has left, so its
//! decision is recorded in the history only, never adopted. `data.updated`
//! is a reviewer's correction: it is recorded as a correction and its
//! decision replaces the held one under the same timestamp rule.
//! `vendor_data` and `workflow_id` take the latest non-empty value.

use didit::payload::{Envelope, SessionStatus, WebhookType};
use kycd_log::store::SessionRecord;
use serde_json::{json, Map, Value};

/// What the projector knows about one delivery besides its payload.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub offset: u64,
    pub event_id: &'a str,
    pub received_at_ms: i64,
    pub source: &'a str,
    /// Only the envelope is authentic (Simple signature): ignore `decision`.
    pub envelope_only: bool,
    pub sandbox: bool,
    pub envelope: &'a Envelope,
}

/// Why a delivery was recorded without moving the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Stale,
    Backwards,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Stale => "stale: older than the current status",
            Skip::Backwards => "backwards: the session is already past this status",
        }
    }
}

/// Whether a delivery with `new` status at `new_ts` may replace `current`
/// set at `current_ts`.
pub fn status_transition(
    current: &SessionStatus,
    current_ts: i64,
    new: &SessionStatus,
    new_ts: i64,
) -> Result<(), Skip> {
    if new_ts < current_ts {
        return Err(Skip::Stale);
    }
    if new.is_backwards_from(current) {
        return Err(Skip::Backwards);
    }
    if new_ts - current_ts <= REORDER_WINDOW_SECS
        && usual_transition(new, current)
        && !usual_transition(current, new)
    {
        return Err(Skip::Backwards);
    }
    if *new == SessionStatus::Expired && current.rank() == Some(2) && *current != *new {
        return Err(Skip::Backwards);
    }
    Ok(())
}

/// How far apart (in Didit's timestamps) two deliveries may be and still be
/// ordered by the usual transitions rather than by time: Didit stamps each
/// attempt, and its retries come up to about five minutes later.
pub const REORDER_WINDOW_SECS: i64 = 300;

/// Didit's usual transitions (docs/didit-protocol.md section 2), including manual and
/// API updates, as far as they order two statuses.
pub fn usual_transition(from: &SessionStatus, to: &SessionStatus) -> bool {
    use SessionStatus as S;
    let updated = matches!(to, S::Approved | S::Declined | S::Resubmitted);
    match from {
        S::NotStarted => matches!(to, S::InProgress | S::Expired),
        S::InProgress => matches!(
            to,
            S::Approved | S::Declined | S::InReview | S::Abandoned | S::AwaitingUser
        ),
        S::Approved => matches!(to, S::KycExpired) || updated,
        S::Declined | S::InReview | S::Abandoned | S::KycExpired | S::AwaitingUser => updated,
        S::Resubmitted => matches!(to, S::InProgress) || updated,
        S::Expired | S::Other(_) => false,
    }
}

fn doc_i64(doc: &Value, key: &str) -> i64 {
    doc.get(key).and_then(Value::as_i64).unwrap_or(i64::MIN)
}

/// What one delivery did to its session.
#[derive(Debug, Clone)]
pub struct Applied {
    pub record: SessionRecord,
    /// The delivery moved the session to a status it did not have (or
    /// created it): a new fact about the session.
    pub moved: bool,
    /// The delivery's decision payload became the session's latest.
    pub adopted: bool,
}

/// Apply one session delivery to the session's record (or create it).
/// Returns `None` if the delivery is not about a session.
pub fn apply(current: Option<SessionRecord>, d: &Delivery<'_>) -> Option<Applied> {
    let env = d.envelope;
    let session_id = env.session_id.clone()?;
    let status = env.status.clone()?;
    let ts = env.timestamp;

    let mut rec = current.unwrap_or_else(|| SessionRecord {
        seq: d.offset,
        session_id,
        vendor_data: None,
        status: status.as_str().to_owned(),
        workflow_id: None,
        created_at_ms: d.received_at_ms,
        updated_at_ms: d.received_at_ms,
        doc: json!({ "status_ts": i64::MIN, "history": [] }),
    });
    let doc = rec
        .doc
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut doc = Value::Object(doc);

    let current_status = SessionStatus::from(rec.status.as_str());
    let first = doc_i64(&doc, "status_ts") == i64::MIN;
    let verdict = if first {
        Ok(())
    } else {
        status_transition(&current_status, doc_i64(&doc, "status_ts"), &status, ts)
    };
    let moved = verdict.is_ok() && (first || status != current_status);
    if verdict.is_ok() {
        rec.status = status.as_str().to_owned();
        doc["status_ts"] = json!(ts);
        if status == SessionStatus::Resubmitted {
            doc["resubmit_info"] = env
                .resubmit_info
                .as_ref()
                .and_then(|r| serde_json::to_value(r).ok())
                .unwrap_or(Value::Null);
        }
    }

    // Didit's decision: latest by timestamp, and only from a body that was
    // authenticated as a whole.
    let mut adopted = false;
    if let Some(decision) = &env.decision {
        if d.envelope_only {
            doc["decision_needs_fetch"] = json!(true);
        } else if verdict.is_ok() && ts >= doc_i64(&doc, "didit_decision_ts") {
            adopted = true;
            doc["didit_decision"] = serde_json::to_value(decision).unwrap_or(Value::Null);
            doc["didit_decision_ts"] = json!(ts);
            doc["decision_needs_fetch"] = json!(false);
        }
    } else if d.envelope_only && status.is_decided() {
        doc["decision_needs_fetch"] = json!(true);
    }

    if env.webhook_type == WebhookType::DataUpdated {
        push(
            &mut doc,
            "corrections",
            json!({ "event": d.event_id, "timestamp": ts }),
        );
    }
    if let Some(v) = env.vendor_data.as_ref().filter(|v| !v.is_empty()) {
        rec.vendor_data = Some(v.clone());
    }
    if let Some(w) = env.workflow_id.as_ref().filter(|w| !w.is_empty()) {
        rec.workflow_id = Some(w.clone());
    }
    if d.sandbox {
        doc["sandbox"] = json!(true);
    }

    let mut entry = Map::new();
    entry.insert("event".into(), json!(d.event_id));
    entry.insert("offset".into(), json!(d.offset));
    entry.insert("webhook_type".into(), json!(env.webhook_type.as_str()));
    entry.insert("status".into(), json!(status.as_str()));
    entry.insert("timestamp".into(), json!(ts));
    entry.insert("received_at_ms".into(), json!(d.received_at_ms));
    entry.insert("source".into(), json!(d.source));
    if let Some(id) = &env.event_id {
        entry.insert("didit_event_id".into(), json!(id));
    }
    entry.insert("applied".into(), json!(verdict.is_ok()));
    if let Err(skip) = verdict {
        entry.insert("skipped".into(), json!(skip.as_str()));
    }
    push(&mut doc, "history", Value::Object(entry));

    rec.updated_at_ms = rec.updated_at_ms.max(d.received_at_ms);
    rec.doc = doc;
    Some(Applied {
        record: rec,
        moved,
        adopted,
    })
}

fn push(doc: &mut Value, key: &str, item: Value) {
    match doc.get_mut(key).and_then(Value::as_array_mut) {
        Some(list) => list.push(item),
        None => doc[key] = json!([item]),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_timestamps_follow_the_usual_transitions() {
        use SessionStatus as S;
        // The reviewer's decision and the review it ends, in one second.
        assert_eq!(
            status_transition(&S::Declined, 100, &S::InReview, 100),
            Err(Skip::Backwards)
        );
        assert_eq!(
            status_transition(&S::InReview, 100, &S::Declined, 100),
            Ok(())
        );
        // An approval updated to a decline in the same second stands.
        assert_eq!(
            status_transition(&S::Approved, 100, &S::Declined, 100),
            Ok(())
        );
        assert_eq!(
            status_transition(&S::Declined, 100, &S::Approved, 100),
            Ok(())
        );
        // A review re-stamped by a retry minutes later is still the review
        // that came before the decision; one after the window is new.
        assert_eq!(
            status_transition(&S::Declined, 100, &S::InReview, 340),
            Err(Skip::Backwards)
        );
        assert_eq!(
            status_transition(&S::Declined, 100, &S::InReview, 401),
            Ok(())
        );
        // Expiry never replaces a result.
        assert_eq!(
            status_transition(&S::Approved, 100, &S::Expired, 500),
            Err(Skip::Backwards)
        );
        assert_eq!(
            status_transition(&S::NotStarted, 100, &S::Expired, 500),
            Ok(())
        );
        // Pairs the transitions do not order keep log order.
        assert_eq!(
            status_transition(&S::Abandoned, 100, &S::InReview, 100),
            Ok(())
        );
    }

    use super::*;

    fn env(status: &str, ts: i64, webhook_type: &str, decision: bool) -> Envelope {
        let mut v = json!({
            "session_id": "s1", "status": status, "timestamp": ts,
            "webhook_type": webhook_type, "vendor_data": "user-1",
        });
        if decision {
            v["decision"] = json!({"session_id": "s1", "status": status, "face_matches": [{"score": ts % 100, "status": "Approved", "warnings": []}]});
        }
        Envelope::from_value(v).unwrap()
    }

    fn run(events: &[(&str, i64, &str, bool)]) -> SessionRecord {
        let envs: Vec<Envelope> = events
            .iter()
            .map(|(s, t, w, d)| env(s, *t, w, *d))
            .collect();
        let mut rec = None;
        for (i, e) in envs.iter().enumerate() {
            let d = Delivery {
                offset: i as u64 + 1,
                event_id: "evt_x",
                received_at_ms: 1000 + i as i64,
                source: "webhook",
                envelope_only: false,
                sandbox: false,
                envelope: e,
            };
            rec = apply(rec, &d).map(|a| a.record);
        }
        rec.unwrap()
    }

    fn applied(r: &SessionRecord) -> Vec<bool> {
        r.doc["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["applied"].as_bool().unwrap())
            .collect()
    }

    #[test]
    fn a_late_in_progress_after_approved_is_recorded_but_does_not_move_the_session() {
        let r = run(&[
            ("Approved", 20, "status.updated", true),
            ("In Progress", 10, "status.updated", false),
        ]);
        assert_eq!(r.status, "Approved");
        assert_eq!(applied(&r), vec![true, false]);
        assert_eq!(r.doc["history"][1]["skipped"], json!(Skip::Stale.as_str()));
    }

    #[test]
    fn backwards_is_refused_even_with_a_newer_timestamp() {
        let r = run(&[
            ("Approved", 20, "status.updated", true),
            ("In Progress", 30, "status.updated", false),
        ]);
        assert_eq!(r.status, "Approved");
        assert_eq!(
            r.doc["history"][1]["skipped"],
            json!(Skip::Backwards.as_str())
        );
    }

    #[test]
    fn in_order_lifecycle_moves_forward() {
        let r = run(&[
            ("Not Started", 1, "status.updated", false),
            ("In Progress", 2, "status.updated", false),
            ("In Review", 3, "status.updated", true),
            ("Approved", 4, "status.updated", true),
        ]);
        assert_eq!(r.status, "Approved");
        assert_eq!(applied(&r), vec![true; 4]);
        assert_eq!(r.doc["didit_decision_ts"], json!(4));
        assert_eq!(r.vendor_data.as_deref(), Some("user-1"));
    }

    #[test]
    fn resubmission_starts_a_new_attempt() {
        let r = run(&[
            ("Declined", 10, "status.updated", true),
            ("Resubmitted", 11, "status.updated", false),
            ("In Progress", 12, "status.updated", false),
            ("Approved", 13, "status.updated", true),
        ]);
        assert_eq!(r.status, "Approved");
        assert_eq!(applied(&r), vec![true; 4]);
    }

    #[test]
    fn reviewer_moves_between_outcomes_by_timestamp() {
        let r = run(&[
            ("In Review", 10, "status.updated", true),
            ("Declined", 12, "status.updated", true),
            ("Approved", 11, "status.updated", true),
        ]);
        assert_eq!(r.status, "Declined");
        assert_eq!(r.doc["didit_decision_ts"], json!(12));
        assert_eq!(applied(&r), vec![true, true, false]);
    }

    #[test]
    fn the_decision_is_the_latest_by_timestamp_and_corrections_are_recorded() {
        let r = run(&[
            ("Approved", 10, "status.updated", true),
            ("Approved", 15, "data.updated", true),
            ("Approved", 12, "status.updated", true),
        ]);
        assert_eq!(r.doc["didit_decision_ts"], json!(15));
        assert_eq!(r.doc["corrections"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn an_envelope_only_delivery_never_supplies_the_decision() {
        let e = env("Approved", 10, "status.updated", true);
        let d = Delivery {
            offset: 1,
            event_id: "evt_x",
            received_at_ms: 1,
            source: "webhook",
            envelope_only: true,
            sandbox: true,
            envelope: &e,
        };
        let r = apply(None, &d).unwrap().record;
        assert_eq!(r.status, "Approved");
        assert!(r.doc.get("didit_decision").is_none());
        assert_eq!(r.doc["decision_needs_fetch"], json!(true));
        assert_eq!(r.doc["sandbox"], json!(true));
    }

    #[test]
    fn a_refused_delivery_never_supplies_the_decision() {
        // A late In Review after the approval, re-stamped by a retry: its
        // results are those of the review, which the session has left.
        let r = run(&[
            ("Approved", 100, "status.updated", true),
            ("In Review", 130, "status.updated", true),
        ]);
        assert_eq!(r.status, "Approved");
        assert_eq!(applied(&r), vec![true, false]);
        assert_eq!(r.doc["didit_decision_ts"], json!(100));
    }

    #[test]
    fn moved_and_adopted_say_what_a_delivery_brought() {
        let a = env("Approved", 10, "status.updated", true);
        let again = env("Approved", 11, "status.updated", true);
        let late = env("In Review", 12, "status.updated", true);
        let d = |offset, e| Delivery {
            offset,
            event_id: "evt_x",
            received_at_ms: 1,
            source: "webhook",
            envelope_only: false,
            sandbox: false,
            envelope: e,
        };
        let first = apply(None, &d(1, &a)).unwrap();
        assert!(first.moved && first.adopted);
        let repeat = apply(Some(first.record), &d(2, &again)).unwrap();
        assert!(!repeat.moved, "the same status again is no move");
        assert!(repeat.adopted);
        let refused = apply(Some(repeat.record), &d(3, &late)).unwrap();
        assert!(!refused.moved && !refused.adopted);
    }

    #[test]
    fn a_didit_move_from_approved_to_review_days_later_applies() {
        // Ongoing AML monitoring: Didit re-screens an approved customer and
        // sends the session to review long after the reorder window.
        let r = run(&[
            ("Approved", 100, "status.updated", true),
            ("In Review", 100 + 3 * 86_400, "status.updated", true),
            ("Declined", 100 + 4 * 86_400, "status.updated", true),
        ]);
        assert_eq!(r.status, "Declined");
        assert_eq!(applied(&r), vec![true, true, true]);
    }

    #[test]
    fn the_same_delivery_twice_is_harmless() {
        let r = run(&[
            ("Approved", 10, "status.updated", true),
            ("Approved", 10, "status.updated", true),
        ]);
        assert_eq!(r.status, "Approved");
        assert_eq!(applied(&r), vec![true, true]);
    }
}
