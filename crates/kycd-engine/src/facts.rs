//! The facts document a policy evaluates (`docs/facts.md`): Didit's results
//! normalised (from v1, v2 or v3), derived signals, identity-graph signals
//! from kycd's own history, and the operator's subject data.
//!
//! Pure and deterministic: the same inputs give byte-identical JSON (keys
//! are sorted by `serde_json::Map`), and "now" is the event's receive time,
//! handed in, never read from a clock. That is what lets a replay rebuild
//! a decision's facts exactly.

use didit::payload::{Decision, Feature, FeatureStatus, LogType, SessionStatus};
use kycd_core::when::format_millis;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::countries::ALPHA3_TO_ALPHA2;

/// Counts from the identity graph, as of the event being decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphSignals {
    pub document_subjects: u64,
    pub device_subjects: u64,
    pub ip_subjects: u64,
    pub phone_subjects: u64,
    pub email_subjects: u64,
    pub prior_declines: u64,
}

/// Everything the facts are built from.
#[derive(Debug, Clone)]
pub struct FactsInput<'a> {
    pub now_ms: i64,
    pub session_id: &'a str,
    pub didit_status: &'a str,
    pub webhook_type: &'a str,
    pub workflow_id: Option<&'a str>,
    pub sandbox: bool,
    pub decision: &'a Decision,
    pub subject: Option<&'a str>,
    pub attributes: Option<&'a Value>,
    pub graph: GraphSignals,
    /// The session's step-up so far (`status`, `checks`, `didit_status`,
    /// `approved`, `session_id`), as the projector keeps it; `None` when
    /// none was requested.
    pub step_up: Option<&'a Value>,
    /// This session is itself a step-up kycd created.
    pub is_step_up_session: bool,
    /// Links that later sessions of other customers revealed
    /// (`[{kind, session_id, subject, at}]`, as the projector keeps them in
    /// the session); `None` when there are none.
    pub later_links: Option<&'a Value>,
}

/// The `graph.later_links` and `graph.later_link_kinds` facts: what later
/// sessions of other customers share with this one (kinds sorted, unique).
pub fn later_link_facts(held: Option<&Value>) -> (Value, Value) {
    let links = held
        .filter(|v| v.is_array())
        .cloned()
        .unwrap_or_else(|| json!([]));
    let kinds: std::collections::BTreeSet<&str> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("kind").and_then(Value::as_str))
        .collect();
    let kinds = json!(kinds);
    (links, kinds)
}

/// The `step_up` facts: what became of the extra check a `step_up` outcome
/// asked for. `status` is `none`, `requested`, `completed` or `expired`.
pub fn step_up_facts(held: Option<&Value>) -> Value {
    let get = |k: &str| held.and_then(|h| h.get(k)).cloned();
    json!({
        "status": get("status").unwrap_or_else(|| json!("none")),
        "checks": get("checks").unwrap_or_else(|| json!([])),
        "didit_status": get("didit_status").unwrap_or(Value::Null),
        "outcome": get("outcome").unwrap_or(Value::Null),
        "approved": get("approved").unwrap_or(json!(false)),
        "session_id": get("session_id").unwrap_or(Value::Null),
    })
}

/// What the identity graph indexes, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityKind {
    Document,
    Device,
    Ip,
    Phone,
    Email,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Document => "document",
            IdentityKind::Device => "device",
            IdentityKind::Ip => "ip",
            IdentityKind::Phone => "phone",
            IdentityKind::Email => "email",
        }
    }
}

/// A biometric authentication: a returning customer's liveness check and a
/// face match against the portrait the operator sent, and nothing else (IP
/// analysis aside). Feature names are read in every wire version's
/// spelling; a liveness check without a face match proves nothing about
/// who it is, so it does not count.
pub fn is_reauthentication(features: &[String]) -> bool {
    let parsed: Vec<Option<Feature>> = features.iter().map(|f| Feature::from_name(f)).collect();
    let has = |f: Feature| parsed.contains(&Some(f));
    has(Feature::Liveness)
        && has(Feature::FaceMatch)
        && parsed.iter().all(|f| {
            matches!(
                f,
                Some(Feature::Liveness | Feature::FaceMatch | Feature::IpAnalysis)
            )
        })
}

/// The identity values a decision carries, normalised and hashed so that
/// the graph index never holds a document number, phone or email in clear.
pub fn identity_keys(d: &Decision) -> Vec<(IdentityKind, String)> {
    let mut keys = Vec::new();
    let mut add = |kind: IdentityKind, value: String| {
        let value = value.trim().to_owned();
        if !value.is_empty() {
            let digest = Sha256::digest(format!("{}:{}", kind.as_str(), value).as_bytes());
            keys.push((kind, hex::encode(&digest[..16])));
        }
    };
    for id in &d.id_verifications {
        if let Some(n) = &id.document_number {
            // The same number in two countries is two documents.
            let country = id.issuing_state.as_deref().unwrap_or("");
            let number: String = n.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
            add(
                IdentityKind::Document,
                format!(
                    "{}/{}",
                    country.to_ascii_uppercase(),
                    number.to_ascii_uppercase()
                ),
            );
        }
    }
    for ip in &d.ip_analyses {
        if let Some(f) = &ip.device_fingerprint {
            add(IdentityKind::Device, f.clone());
        }
        if let Some(a) = &ip.ip_address {
            add(IdentityKind::Ip, a.clone());
        }
    }
    for p in &d.phone_verifications {
        if let Some(n) = p.full_number.as_ref().or(p.phone_number.as_ref()) {
            add(
                IdentityKind::Phone,
                n.chars().filter(|c| c.is_ascii_digit()).collect(),
            );
        }
    }
    for e in &d.email_verifications {
        if let Some(m) = &e.email {
            add(IdentityKind::Email, m.to_ascii_lowercase());
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// ISO alpha-3 (documents) to alpha-2 (IP analysis); unknown codes stay
/// unknown rather than becoming a mismatch.
pub fn alpha2(code: &str) -> Option<&'static str> {
    let code = code.trim().to_ascii_uppercase();
    if code.len() == 2 {
        return ALPHA3_TO_ALPHA2
            .iter()
            .find(|(_, a2)| *a2 == code)
            .map(|(_, a2)| *a2);
    }
    ALPHA3_TO_ALPHA2
        .binary_search_by(|(a3, _)| (*a3).cmp(code.as_str()))
        .ok()
        .map(|i| ALPHA3_TO_ALPHA2[i].1)
}

fn status_str(s: Option<&FeatureStatus>) -> Value {
    s.map(|s| json!(s.as_str())).unwrap_or(Value::Null)
}

/// `YYYY-MM-DD` to days since the Unix epoch.
fn days_from_date(s: &str) -> Option<i64> {
    let mut parts = s.get(..10)?.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn age_at(dob: &str, now_ms: i64) -> Option<i64> {
    let born = days_from_date(dob)?;
    let today = now_ms.div_euclid(86_400_000);
    // Whole years: compare month-day strings after counting years.
    let by: i64 = dob.get(..4)?.parse().ok()?;
    let (ny, nmd) = {
        let t = format_millis(now_ms);
        (t.get(..4)?.parse::<i64>().ok()?, t.get(5..10)?.to_owned())
    };
    if today < born {
        return None;
    }
    let mut age = ny - by;
    if nmd.as_str() < dob.get(5..10)? {
        age -= 1;
    }
    Some(age)
}

fn age_band(age: i64) -> &'static str {
    match age {
        i64::MIN..=17 => "minor",
        18..=20 => "18-20",
        21..=24 => "21-24",
        25..=64 => "25-64",
        _ => "65+",
    }
}

/// The distance between the IP's and the document's locations from Didit's
/// `locations_info`, whose exact shape is not documented: a number under a
/// key naming a distance, at the top or one level down (keys in sorted
/// order, so the choice is deterministic).
fn distance_km(info: &Value) -> Option<f64> {
    let direct = |v: &Value| -> Option<f64> {
        let o = v.as_object()?;
        ["distance_km", "distance"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_f64))
            .or_else(|| {
                o.iter()
                    .find(|(k, _)| k.contains("distance"))
                    .and_then(|(_, v)| v.as_f64())
            })
    };
    direct(info).or_else(|| info.as_object()?.values().find_map(direct))
}

fn any_true(mut it: impl Iterator<Item = Option<bool>>) -> bool {
    it.any(|b| b == Some(true))
}

const TAMPERING: [&str; 4] = [
    "PRINTED_COPY_DETECTED",
    "SCREEN_CAPTURE_DETECTED",
    "PORTRAIT_MANIPULATION_DETECTED",
    "MRZ_VALIDATION_FAILED",
];
const LIVENESS_ATTACK: [&str; 2] = ["LIVENESS_FACE_ATTACK", "NO_FACE_DETECTED"];

/// The status the newest entry of Didit's `reviews[]` set: a decision made
/// in Didit's console or through its API, not by Didit's automatic checks.
/// kycd's own write-backs are reviews too (their comment starts with
/// [`crate::actions::COMMENT_PREFIX`]) and are skipped: an echo of kycd's
/// decline must not read as a person's. Newest by `created_at` (ISO 8601
/// text, which sorts as time), the later entry on a tie, whatever order
/// Didit lists them in. Who made it (often an email address) never enters
/// the facts.
fn last_review_status(d: &Decision) -> Option<&str> {
    d.reviews
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            !r.comment
                .as_deref()
                .is_some_and(|c| c.starts_with(crate::actions::COMMENT_PREFIX))
        })
        .filter(|(_, r)| r.new_status.is_some())
        .max_by(|(i, a), (j, b)| a.created_at.cmp(&b.created_at).then(i.cmp(j)))
        .and_then(|(_, r)| r.new_status.as_ref())
        .map(SessionStatus::as_str)
}

/// Build the facts document.
pub fn build(input: &FactsInput<'_>) -> Value {
    let d = input.decision;
    let mut risks: Vec<&str> = Vec::new();
    let mut declining: Vec<&str> = Vec::new();
    let mut review: Vec<&str> = Vec::new();
    for (_, w) in d.all_warnings() {
        if let Some(r) = w.risk_code() {
            risks.push(r);
            match w.log_type {
                Some(LogType::Error) => declining.push(r),
                Some(LogType::Warning) => review.push(r),
                _ => {}
            }
        }
    }
    for list in [&mut risks, &mut declining, &mut review] {
        list.sort_unstable();
        list.dedup();
    }
    let has = |code: &str| risks.binary_search(&code).is_ok();

    // Document: the first ID verification (Didit runs one per session).
    let id = d.id_verifications.first();
    let age = id.and_then(|i| i.age).or_else(|| {
        id.and_then(|i| i.date_of_birth.as_deref())
            .and_then(|dob| age_at(dob, input.now_ms))
    });
    let today = input.now_ms.div_euclid(86_400_000);
    let days_to_expiry = id
        .and_then(|i| i.expiration_date.as_deref())
        .and_then(days_from_date)
        .map(|exp| exp - today);
    let doc_country = id
        .and_then(|i| i.issuing_state.as_deref().or(i.nationality.as_deref()))
        .and_then(alpha2);
    let document = json!({
        "present": id.is_some(),
        "status": status_str(id.and_then(|i| i.status.as_ref())),
        "type": id.and_then(|i| i.document_type.clone()),
        "issuing_country": id.and_then(|i| i.issuing_state.clone()),
        "nationality": id.and_then(|i| i.nationality.clone()),
        "age": age,
        "age_band": age.map(age_band),
        "days_to_expiry": days_to_expiry,
        "expired": days_to_expiry.map(|d| d < 0).or_else(|| has("DOCUMENT_EXPIRED").then_some(true)),
        "tampering": TAMPERING.iter().any(|c| has(c)),
    });

    let live = d.liveness_checks.first();
    let liveness = json!({
        "present": live.is_some(),
        "status": status_str(live.and_then(|l| l.status.as_ref())),
        "score": live.and_then(|l| l.score),
        "method": live.and_then(|l| l.method.as_ref().map(|m| m.to_ascii_uppercase())),
        "attack": LIVENESS_ATTACK.iter().any(|c| has(c)),
    });

    let fm = d.face_matches.first();
    let face_match = json!({
        "present": fm.is_some(),
        "status": status_str(fm.and_then(|f| f.status.as_ref())),
        "score": fm.and_then(|f| f.score),
    });

    let aml_entry = d.aml_screenings.first();
    let hits = d.aml_screenings.iter().flat_map(|a| a.hits.iter());
    let mut max_match: Option<f64> = None;
    let (mut pep, mut sanction, mut adverse) = (false, false, false);
    for h in hits {
        if let Some(s) = h.match_score {
            max_match = Some(max_match.map_or(s, |m: f64| m.max(s)));
        }
        let ds = |needle: &str| {
            h.datasets
                .iter()
                .any(|d| d.to_ascii_lowercase().contains(needle))
        };
        pep |= h.pep_matches.as_ref().is_some_and(|m| m.count() > 0) || ds("pep");
        sanction |= h.sanction_matches.as_ref().is_some_and(|m| m.count() > 0) || ds("sanction");
        adverse |= h
            .adverse_media_matches
            .as_ref()
            .is_some_and(|m| m.count() > 0)
            || ds("adverse");
    }
    let aml = json!({
        "present": aml_entry.is_some(),
        "status": status_str(aml_entry.and_then(|a| a.status.as_ref())),
        "total_hits": d.aml_screenings.iter().filter_map(|a| a.total_hits).sum::<i64>(),
        "max_match_score": if aml_entry.is_some() { json!(max_match.unwrap_or(0.0)) } else { Value::Null },
        "pep": pep,
        "sanction": sanction,
        "adverse_media": adverse,
    });

    let ipa = d.ip_analyses.first();
    let ip_country = ipa
        .and_then(|i| i.ip_country_code.as_deref())
        .and_then(alpha2);
    let ip = json!({
        "present": ipa.is_some(),
        "country": ip_country,
        "vpn_or_tor": ipa.and_then(|i| i.is_vpn_or_tor).unwrap_or(false),
        "data_center": ipa.and_then(|i| i.is_data_center).unwrap_or(false),
        "country_mismatch": match (ip_country, doc_country) {
            (Some(a), Some(b)) => json!(a != b),
            _ => Value::Null,
        },
        "distance_km": ipa.and_then(|i| i.locations_info.as_ref()).and_then(distance_km),
    });

    let phone = json!({
        "present": !d.phone_verifications.is_empty(),
        "disposable": any_true(d.phone_verifications.iter().map(|p| p.is_disposable)) || has("DISPOSABLE_NUMBER_DETECTED"),
        "virtual": any_true(d.phone_verifications.iter().map(|p| p.is_virtual)) || has("VOIP_NUMBER_DETECTED"),
    });
    let email = json!({
        "present": !d.email_verifications.is_empty(),
        "disposable": any_true(d.email_verifications.iter().map(|e| e.is_disposable)) || has("DISPOSABLE_EMAIL_DETECTED"),
        "breached": any_true(d.email_verifications.iter().map(|e| e.is_breached)) || has("BREACHED_EMAIL_DETECTED"),
        "undeliverable": any_true(d.email_verifications.iter().map(|e| e.is_undeliverable)),
    });

    let g = input.graph;
    let (later_links, later_link_kinds) = later_link_facts(input.later_links);
    let graph = json!({
        "document_subjects": g.document_subjects,
        "device_subjects": g.device_subjects,
        "ip_subjects": g.ip_subjects,
        "phone_subjects": g.phone_subjects,
        "email_subjects": g.email_subjects,
        "prior_declines": g.prior_declines,
        "duplicate_face": has("DUPLICATED_FACE") || d.liveness_checks.iter().any(|l| !l.matches.is_empty()),
        "duplicate_user": has("POSSIBLE_DUPLICATED_USER"),
        "later_links": later_links,
        "later_link_kinds": later_link_kinds,
    });

    let attributes = input
        .attributes
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let blocklisted = attributes
        .get("blocklisted")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut facts = json!({
        "now": format_millis(input.now_ms),
        "session": {
            "id": input.session_id,
            "didit_status": input.didit_status,
            "webhook_type": input.webhook_type,
            "workflow_id": input.workflow_id,
            "payload_version": format!("{:?}", d.version).to_ascii_lowercase(),
            "sandbox": input.sandbox,
            "reauthentication": is_reauthentication(&d.features),
            "step_up": input.is_step_up_session,
        },
        "step_up": step_up_facts(input.step_up),
        "subject": {
            "id": input.subject,
            "attributes": attributes,
            "blocklisted": blocklisted,
        },
        "didit": {
            "features": d.features,
            "risks": risks,
            "declining_risks": declining,
            "review_risks": review,
        },
        "document": document,
        "liveness": liveness,
        "face_match": face_match,
        "aml": aml,
        "ip": ip,
        "phone": phone,
        "email": email,
        "graph": graph,
    });
    // Only when there is one: decisions stored before this fact existed
    // lack the key, and a missing key reads as null in every rule, so
    // they still reproduce byte for byte.
    if let Some(status) = last_review_status(d) {
        facts["didit"]["last_review_status"] = Value::from(status);
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use didit::payload::Envelope;

    const NOW_MS: i64 = 1_774_970_000_000;

    fn vector_body(name: &str) -> String {
        let v: Value = didit::testdata::vectors();
        let case = v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        case["body"].as_str().unwrap().to_owned()
    }

    fn vector(name: &str) -> Envelope {
        Envelope::from_slice(vector_body(name).as_bytes()).unwrap()
    }

    fn facts_of(env: &Envelope, graph: GraphSignals, attrs: Option<&Value>) -> Value {
        build(&FactsInput {
            now_ms: NOW_MS,
            session_id: "s",
            didit_status: "Approved",
            webhook_type: "status.updated",
            workflow_id: None,
            sandbox: false,
            decision: env.decision.as_ref().unwrap(),
            subject: Some("user-1001"),
            attributes: attrs,
            graph,
            step_up: None,
            is_step_up_session: false,
            later_links: None,
        })
    }

    #[test]
    fn a_full_v3_decision_becomes_normalised_facts() {
        let f = facts_of(
            &vector("approved_full_decision"),
            GraphSignals::default(),
            None,
        );
        assert_eq!(f["document"]["age"], 37);
        assert_eq!(f["document"]["age_band"], "25-64");
        assert_eq!(f["document"]["expired"], false);
        assert_eq!(f["document"]["issuing_country"], "DEU");
        assert_eq!(f["ip"]["country"], "DE");
        assert_eq!(
            f["ip"]["country_mismatch"], false,
            "DEU and DE are the same country"
        );
        assert_eq!(f["face_match"]["score"], 91.3);
        assert_eq!(f["liveness"]["method"], "PASSIVE");
        assert_eq!(f["aml"]["total_hits"], 0);
        assert_eq!(f["subject"]["blocklisted"], false);
        assert_eq!(f["session"]["payload_version"], "v3");
        assert_eq!(f["now"], "2026-03-31T15:13:20.000Z");
    }

    #[test]
    fn v1_and_v2_decisions_give_the_same_shape() {
        let v1 = facts_of(&vector("v1_legacy_decision"), GraphSignals::default(), None);
        assert_eq!(v1["session"]["payload_version"], "v1");
        assert_eq!(
            v1["document"]["expired"], true,
            "expired 2026-03-24, a week before now"
        );
        assert_eq!(v1["ip"]["country_mismatch"], false);
        assert!(v1["aml"]["max_match_score"].as_f64().unwrap() > 70.0);
        assert_eq!(v1["didit"]["review_risks"], json!(["POSSIBLE_MATCH_FOUND"]));
        let v2 = facts_of(
            &vector("v2_singular_decision"),
            GraphSignals::default(),
            None,
        );
        assert_eq!(v2["face_match"]["score"], 73.81);
        assert_eq!(v2["graph"]["duplicate_user"], true);
        assert_eq!(v2["ip"]["country_mismatch"], false);
    }

    #[test]
    fn declining_risks_and_attacks_are_derived() {
        let f = facts_of(
            &vector("declined_with_warnings"),
            GraphSignals::default(),
            None,
        );
        assert_eq!(f["liveness"]["attack"], true);
        assert_eq!(
            f["didit"]["declining_risks"],
            json!(["LIVENESS_FACE_ATTACK"])
        );
        assert_eq!(f["document"]["present"], false);
        assert_eq!(f["document"]["age"], Value::Null);
        assert_eq!(
            f["ip"]["country_mismatch"],
            Value::Null,
            "unknown is not a mismatch"
        );
    }

    #[test]
    fn the_newest_review_at_didit_is_a_fact_without_its_author() {
        let f = facts_of(
            &vector("approved_full_decision"),
            GraphSignals::default(),
            None,
        );
        assert!(
            f["didit"].get("last_review_status").is_none(),
            "no reviews, no key (decisions from before the fact reproduce)"
        );
        let with_reviews = |reviews: Value| {
            let mut body: Value =
                serde_json::from_str(vector_body("approved_full_decision").as_str()).unwrap();
            body["decision"]["reviews"] = reviews;
            let env = Envelope::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap();
            facts_of(&env, GraphSignals::default(), None)
        };
        // Listed newest first: the newest by time counts, not the last.
        let f = with_reviews(json!([
            {"user": "analyst@operator.example", "new_status": "Declined", "comment": "y", "created_at": "2026-03-31T16:13:14.123456Z"},
            {"user": "api", "new_status": "Approved", "comment": "x", "created_at": "2026-03-31T15:13:14.123456Z"}
        ]));
        assert_eq!(f["didit"]["last_review_status"], "Declined");
        assert!(
            !f.to_string().contains("analyst@"),
            "the reviewer is not a fact"
        );
        // kycd's own write-back is no reviewer's decision.
        let f = with_reviews(json!([
            {"user": "api", "new_status": "Declined", "comment": "kycd decision dec_1: decline (under_age: The customer is under 18)", "created_at": "2026-03-31T16:13:14.123456Z"}
        ]));
        assert!(
            f["didit"].get("last_review_status").is_none(),
            "{}",
            f["didit"]
        );
        let f = with_reviews(json!([
            {"user": "analyst@operator.example", "new_status": "Approved", "comment": "ok", "created_at": "2026-03-31T15:13:14.123456Z"},
            {"user": "api", "new_status": "Declined", "comment": "kycd decision dec_2: decline", "created_at": "2026-03-31T16:13:14.123456Z"}
        ]));
        assert_eq!(f["didit"]["last_review_status"], "Approved");
    }

    #[test]
    fn graph_signals_and_subject_attributes_enter_the_facts() {
        let attrs = json!({"blocklisted": true, "chargebacks": 2});
        let graph = GraphSignals {
            document_subjects: 2,
            prior_declines: 1,
            ..Default::default()
        };
        let f = facts_of(&vector("approved_full_decision"), graph, Some(&attrs));
        assert_eq!(f["subject"]["blocklisted"], true);
        assert_eq!(f["subject"]["attributes"]["chargebacks"], 2);
        assert_eq!(f["graph"]["document_subjects"], 2);
        assert_eq!(f["graph"]["prior_declines"], 1);
    }

    #[test]
    fn facts_are_deterministic() {
        let env = vector("approved_full_decision");
        let a = facts_of(&env, GraphSignals::default(), None).to_string();
        let b = facts_of(&env, GraphSignals::default(), None).to_string();
        assert_eq!(a, b);
    }

    #[test]
    fn the_ip_to_document_distance_is_read_when_didit_gives_it() {
        assert_eq!(distance_km(&json!({"distance_km": 12.4})), Some(12.4));
        assert_eq!(
            distance_km(&json!({"ip": {"distance_to_document_km": 830}})),
            Some(830.0)
        );
        assert_eq!(distance_km(&json!({"city": "Berlin"})), None);
        let f = facts_of(
            &vector("approved_full_decision"),
            GraphSignals::default(),
            None,
        );
        assert_eq!(f["ip"]["distance_km"], Value::Null, "unknown, not zero");
    }

    #[test]
    fn country_codes_normalise_and_unknown_stays_unknown() {
        assert_eq!(alpha2("DEU"), Some("DE"));
        assert_eq!(alpha2("deu"), Some("DE"));
        assert_eq!(alpha2("D"), Some("DE"));
        assert_eq!(alpha2("DE"), Some("DE"));
        assert_eq!(alpha2("XXX"), None);
        assert_eq!(alpha2("ZZ"), None);
    }

    #[test]
    fn ages_and_dates_are_computed_from_the_event_time() {
        assert_eq!(days_from_date("1970-01-01"), Some(0));
        assert_eq!(days_from_date("2026-03-31"), Some(NOW_MS / 86_400_000));
        assert_eq!(age_at("2008-03-31", NOW_MS), Some(18));
        assert_eq!(age_at("2008-04-01", NOW_MS), Some(17));
        assert_eq!(days_from_date("garbage"), None);
    }

    #[test]
    fn only_liveness_with_a_face_match_is_a_reauthentication() {
        let f = |names: &[&str]| {
            is_reauthentication(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        };
        assert!(f(&["LIVENESS", "FACE_MATCH"]));
        assert!(f(&["liveness", "FACE", "IP_ANALYSIS"]));
        assert!(!f(&["LIVENESS"]), "no face match: who it is stays unknown");
        assert!(
            !f(&["OCR", "LIVENESS", "FACE"]),
            "v1 spells the document OCR"
        );
        assert!(!f(&["LIVENESS", "FACE_MATCH", "NFC"]));
        assert!(!f(&["LIVENESS", "FACE_MATCH", "SOMETHING_NEW"]));
        assert!(!f(&[]));
        let env = vector("biometric_reauthentication");
        assert!(is_reauthentication(
            &env.decision.as_ref().unwrap().features
        ));
        let env = vector("approved_full_decision");
        assert!(!is_reauthentication(
            &env.decision.as_ref().unwrap().features
        ));
    }

    #[test]
    fn identity_keys_are_hashed_and_normalised() {
        let env = vector("approved_full_decision");
        let keys = identity_keys(env.decision.as_ref().unwrap());
        let kinds: Vec<_> = keys.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![IdentityKind::Document, IdentityKind::Ip]);
        assert!(keys
            .iter()
            .all(|(_, v)| v.len() == 32 && !v.contains("X1234567")));
    }
}
