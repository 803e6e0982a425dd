//! What a decision makes kycd *do*: the outbox entries a decision implies.
//!
//! Pure: the projector calls [`plan`] for each active decision and commits
//! the returned actions in the same transaction as the decision; workers in
//! the server execute them. The mapping (docs/didit-protocol.md section 4 for what
//! Didit allows):
//!
//! | outcome | at Didit | to the operator |
//! |---|---|---|
//! | `approve` | `Approved`, only from a status that is not stricter, unless loosening is allowed | `decision.created` / `decision.changed` |
//! | `decline` | `Declined` when Didit's status differs | the same |
//! | `block` | `Declined` as above, and the blocklist (face and document by default) | the same |
//! | `resubmit` | `Resubmitted` with the nodes to redo | the same |
//! | `step_up` | a new session per check on the check's workflow | the same; `step_up.requested` once created |
//! | `review` | nothing (Didit's API cannot set `In Review`) | the same, and `review.required` |
//!
//! **Only stricter, automatically.** Strictness is Approved < In Review <
//! Declined: kycd writes `Declined` over anything, but `Approved` over a
//! Didit `In Review` or `Declined` only when the operator allowed loosening
//! (`KYCD_WRITEBACK_ALLOW_LOOSENING`), which the action records.
//!
//! **No loops.** Each status write-back is remembered in the session
//! ([`Writeback`]); the delivery Didit sends because of it is recognised by
//! the projector, recorded, and not decided on again.
//!
//! Idempotency keys are `<event offset>:<kind>:<target>`: the same event
//! decided again (a replayed batch) enqueues nothing new.

use std::collections::BTreeMap;

use kycd_log::outbox::NewAction;
use kycd_log::store::DecisionRecord;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const UPDATE_STATUS: &str = "didit.update_status";
pub const BLOCKLIST: &str = "didit.blocklist";
pub const STEP_UP: &str = "didit.step_up";
pub const OPERATOR_WEBHOOK: &str = "operator.webhook";
/// Every kind of action a decision plans.
pub const KINDS: [&str; 4] = [UPDATE_STATUS, BLOCKLIST, STEP_UP, OPERATOR_WEBHOOK];

/// Statuses Didit's update-status accepts a change from.
pub const UPDATABLE_FROM: [&str; 6] = [
    "Approved",
    "Declined",
    "In Review",
    "Kyc Expired",
    "Abandoned",
    "Resubmitted",
];

/// What to put on Didit's blocklist when kycd blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlocklistItems {
    pub face: bool,
    pub document: bool,
    pub phone: bool,
    pub email: bool,
}

impl Default for BlocklistItems {
    fn default() -> Self {
        Self {
            face: true,
            document: true,
            phone: false,
            email: false,
        }
    }
}

impl BlocklistItems {
    /// Parse `face,document,phone,email` (any subset).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut items = Self {
            face: false,
            document: false,
            phone: false,
            email: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "face" => items.face = true,
                "document" => items.document = true,
                "phone" => items.phone = true,
                "email" => items.email = true,
                other => {
                    return Err(format!(
                        "unknown blocklist item {other:?}: expected face, document, phone or email"
                    ))
                }
            }
        }
        Ok(items)
    }
}

/// How decisions act. The default plans nothing, which is what replays
/// and tests of the decision engine alone want.
#[derive(Debug, Clone, Default)]
pub struct ActionSettings {
    /// Write decisions back to Didit and create step-up sessions.
    pub didit: bool,
    /// Let automatic write-back approve a session Didit declined or sent
    /// to review.
    pub allow_loosening: bool,
    pub blocklist: BlocklistItems,
    /// Step-up check (`NFC`, `PHONE`, `BIOMETRIC_AUTH`) → Didit workflow id.
    pub step_up_workflows: BTreeMap<String, String>,
    /// Act on sandbox deliveries too.
    pub act_on_sandbox: bool,
    /// Send decision webhooks to the operator.
    pub operator_webhooks: bool,
}

/// A status kycd wrote (or is about to write) to Didit, kept in the
/// session document so Didit's resulting delivery is recognised.
pub fn writeback_marker(status: &str, decision_id: &str) -> Value {
    json!({ "status": status, "decision_id": decision_id })
}

/// The operator message id for an idempotency key: the same on every retry
/// and every replay of the message (Standard Webhooks `webhook-id`).
pub fn message_id(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("msg_{}", &hex::encode(digest)[..32])
}

/// One operator webhook, ready to enqueue.
pub fn operator_message(
    key: String,
    event_type: &str,
    at_ms: i64,
    session_id: Option<&str>,
    data: Value,
) -> NewAction {
    let id = message_id(&key);
    NewAction {
        payload: json!({
            "message_id": id,
            "body": {
                "type": event_type,
                "timestamp": kycd_core::when::format_millis(at_ms),
                "data": data,
            },
        }),
        idempotency_key: key,
        kind: OPERATOR_WEBHOOK.to_owned(),
        session_id: session_id.map(str::to_owned),
        decision_id: None,
        created_at_ms: at_ms,
    }
}

/// Everything [`plan`] needs about one decision.
pub struct PlanInput<'a> {
    pub decision: &'a DecisionRecord,
    /// The outcome of the session's previous active decision, if any.
    pub previous_outcome: Option<&'a str>,
    /// Didit's status when the decision was made.
    pub didit_status: &'a str,
    pub sandbox: bool,
    /// This session is itself a step-up (it never gets a step-up of its own).
    pub is_step_up_session: bool,
    /// Didit's latest decision (for node ids of a resubmission).
    pub didit_decision: Option<&'a Value>,
}

/// What [`plan`] returns.
#[derive(Debug, Default)]
pub struct Plan {
    pub actions: Vec<NewAction>,
    /// The status written back, for [`writeback_marker`].
    pub writeback: Option<String>,
    /// Checks a step-up was requested for.
    pub step_up_checks: Vec<String>,
}

/// The actions one decision implies.
pub fn plan(settings: &ActionSettings, input: &PlanInput<'_>) -> Plan {
    let d = input.decision;
    let mut out = Plan::default();
    let key = |kind: &str, target: &str| format!("{}:{kind}:{target}", d.event_offset);
    let at = d.decided_at_ms;

    if settings.didit && (!input.sandbox || settings.act_on_sandbox) {
        let mut update = |new_status: &str, extra: Value| {
            if input.didit_status == new_status || !UPDATABLE_FROM.contains(&input.didit_status) {
                return;
            }
            let mut payload = json!({
                "session_id": d.session_id,
                "new_status": new_status,
                "comment": comment(d),
                "from_status": input.didit_status,
            });
            if let (Value::Object(p), Value::Object(e)) = (&mut payload, extra) {
                p.extend(e);
            }
            out.actions.push(NewAction {
                idempotency_key: key(UPDATE_STATUS, new_status),
                kind: UPDATE_STATUS.to_owned(),
                session_id: Some(d.session_id.clone()),
                decision_id: Some(d.id.clone()),
                payload,
                created_at_ms: at,
            });
            out.writeback = Some(new_status.to_owned());
        };
        match d.outcome.as_str() {
            "approve" => {
                let stricter = matches!(input.didit_status, "In Review" | "Declined");
                if !stricter {
                    update("Approved", json!({}));
                } else if settings.allow_loosening {
                    update("Approved", json!({"loosening": true}));
                }
            }
            "decline" => update("Declined", json!({})),
            "block" => {
                update("Declined", json!({}));
                let b = settings.blocklist;
                out.actions.push(NewAction {
                    idempotency_key: key(BLOCKLIST, "add"),
                    kind: BLOCKLIST.to_owned(),
                    session_id: Some(d.session_id.clone()),
                    decision_id: Some(d.id.clone()),
                    payload: json!({
                        "session_id": d.session_id,
                        "blocklist_face": b.face,
                        "blocklist_document": b.document,
                        "blocklist_phone": b.phone,
                        "blocklist_email": b.email,
                    }),
                    created_at_ms: at,
                });
            }
            "resubmit" => {
                let nodes = resubmit_nodes(d, input.didit_decision);
                if !nodes.is_empty() && input.didit_status != "Resubmitted" {
                    update("Resubmitted", json!({"nodes_to_resubmit": nodes}));
                }
            }
            "step_up" if !input.is_step_up_session => {
                let checks: Vec<String> = d
                    .doc
                    .get("checks")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect();
                for check in &checks {
                    out.actions.push(NewAction {
                        idempotency_key: key(STEP_UP, check),
                        kind: STEP_UP.to_owned(),
                        session_id: Some(d.session_id.clone()),
                        decision_id: Some(d.id.clone()),
                        payload: json!({
                            "original_session_id": d.session_id,
                            "vendor_data": d.subject,
                            "check": check,
                            "workflow_id": settings.step_up_workflows.get(check),
                        }),
                        created_at_ms: at,
                    });
                }
                out.step_up_checks = checks;
            }
            _ => {}
        }
    }

    if settings.operator_webhooks {
        let data = json!({
            "decision_id": d.id,
            "session_id": d.session_id,
            "vendor_data": d.subject,
            "outcome": d.outcome,
            "previous_outcome": input.previous_outcome,
            "score": d.score,
            "reasons": d.doc.get("reasons"),
            "checks": d.doc.get("checks"),
            "resubmit_nodes": d.doc.get("resubmit_nodes"),
            "policy_version": d.policy_version,
            "didit_status": input.didit_status,
            "sandbox": input.sandbox,
            "decided_at": d.doc.get("decided_at"),
        });
        let created = input.previous_outcome.is_none();
        if created || input.previous_outcome != Some(d.outcome.as_str()) {
            let kind = if created {
                "decision.created"
            } else {
                "decision.changed"
            };
            out.actions.push(operator_message(
                key(OPERATOR_WEBHOOK, kind),
                kind,
                at,
                Some(&d.session_id),
                data.clone(),
            ));
        }
        if d.outcome == "review" {
            out.actions.push(operator_message(
                key(OPERATOR_WEBHOOK, "review.required"),
                "review.required",
                at,
                Some(&d.session_id),
                data,
            ));
        }
    }
    for a in &mut out.actions {
        a.decision_id.get_or_insert_with(|| d.id.clone());
    }
    out
}

/// How every update-status comment kycd writes begins, so that the review
/// entry Didit records for it is recognised as kycd's own
/// (`didit.last_review_status` skips it).
pub const COMMENT_PREFIX: &str = "kycd decision ";

/// The update-status comment: the decision and its reasons (rule ids and
/// the policy's fixed texts, never the customer's data).
fn comment(d: &DecisionRecord) -> String {
    let mut s = format!("{COMMENT_PREFIX}{}: {}", d.id, d.outcome);
    let reasons: Vec<String> = d
        .doc
        .get("reasons")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(format!(
                "{}: {}",
                r.get("rule")?.as_str()?,
                r.get("text")?.as_str()?
            ))
        })
        .collect();
    if !reasons.is_empty() {
        s.push_str(" (");
        s.push_str(&reasons.join("; "));
        s.push(')');
    }
    // Didit keeps comments short; the decision id leads to the rest.
    if s.len() > 1000 {
        let mut cut = 997;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The policy's resubmit nodes with Didit's node ids filled in from the
/// session's decision where the policy named only the feature.
fn resubmit_nodes(d: &DecisionRecord, didit_decision: Option<&Value>) -> Vec<Value> {
    let wanted = d
        .doc
        .get("resubmit_nodes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    wanted
        .iter()
        .filter_map(|n| {
            let feature = n.get("feature")?.as_str()?;
            let node_id = n
                .get("node_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| node_of(didit_decision?, feature))?;
            Some(json!({"node_id": node_id, "feature": feature}))
        })
        .collect()
}

/// Whether the session's workflow has the step `feature` (as
/// [`kycd_policy::DIDIT_FEATURES`] names it), from Didit's decision on it:
/// only a step it has can be resubmitted.
pub fn workflow_has_step(didit_decision: Option<&Value>, feature: &str) -> bool {
    didit_decision.is_some_and(|d| node_of(d, feature).is_some())
}

/// The features among `nodes` (`[{"feature": ...}]`, the one node format
/// of policy files, the API and the console) that the workflow lacks.
pub fn missing_steps(didit_decision: Option<&Value>, nodes: &[Value]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.get("node_id").and_then(Value::as_str).is_none())
        .filter_map(|n| n.get("feature").and_then(Value::as_str))
        .filter(|f| !workflow_has_step(didit_decision, f))
        .map(str::to_owned)
        .collect()
}

fn node_of(decision: &Value, feature: &str) -> Option<String> {
    let list = match feature {
        "ID_VERIFICATION" => "id_verifications",
        "NFC" => "nfc_verifications",
        "LIVENESS" => "liveness_checks",
        "FACE_MATCH" => "face_matches",
        "POA" => "poa_verifications",
        "PHONE" => "phone_verifications",
        "EMAIL" => "email_verifications",
        "AML" => "aml_screenings",
        "IP_ANALYSIS" => "ip_analyses",
        "DATABASE_VALIDATION" => "database_validations",
        _ => return None,
    };
    decision
        .get(list)?
        .as_array()?
        .iter()
        .find_map(|e| e.get("node_id")?.as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(outcome: &str) -> DecisionRecord {
        DecisionRecord {
            id: "dec_1".into(),
            event_offset: 7,
            session_id: "s1".into(),
            subject: Some("u1".into()),
            policy_version: "v1".into(),
            shadow: false,
            outcome: outcome.into(),
            score: 40.0,
            decided_at_ms: 1_000,
            decided_by: None,
            doc: json!({
                "reasons": [{"rule": "r1", "text": "Because"}],
                "checks": ["NFC"],
                "resubmit_nodes": [{"feature": "ID_VERIFICATION"}],
                "decided_at": "1970-01-01T00:00:01.000Z",
            }),
        }
    }

    fn settings() -> ActionSettings {
        ActionSettings {
            didit: true,
            operator_webhooks: true,
            step_up_workflows: [("NFC".to_owned(), "wf-nfc".to_owned())].into(),
            ..ActionSettings::default()
        }
    }

    fn run(s: &ActionSettings, outcome: &str, didit_status: &str) -> Plan {
        let d = decision(outcome);
        let dd = json!({"id_verifications": [{"node_id": "feature_ocr_1"}]});
        plan(
            s,
            &PlanInput {
                decision: &d,
                previous_outcome: None,
                didit_status,
                sandbox: false,
                is_step_up_session: false,
                didit_decision: Some(&dd),
            },
        )
    }

    fn kinds(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .map(|a| {
                format!(
                    "{}:{}",
                    a.kind,
                    a.payload["new_status"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn write_back_only_makes_didit_stricter() {
        let s = settings();
        let p = run(&s, "decline", "Approved");
        assert_eq!(p.writeback.as_deref(), Some("Declined"));
        assert_eq!(
            p.actions[0].payload["comment"],
            "kycd decision dec_1: decline (r1: Because)"
        );
        // Already declined: nothing to write.
        assert!(run(&s, "decline", "Declined").writeback.is_none());
        // Approving over Didit's review or decline needs the setting.
        assert!(run(&s, "approve", "In Review").writeback.is_none());
        assert!(run(&s, "approve", "Declined").writeback.is_none());
        let loose = ActionSettings {
            allow_loosening: true,
            ..settings()
        };
        let p = run(&loose, "approve", "Declined");
        assert_eq!(p.writeback.as_deref(), Some("Approved"));
        assert_eq!(p.actions[0].payload["loosening"], true);
        // Didit cannot update an unfinished session.
        assert!(run(&s, "decline", "In Progress").writeback.is_none());
    }

    #[test]
    fn block_declines_and_blocklists() {
        let p = run(&settings(), "block", "Approved");
        assert_eq!(
            kinds(&p)[..2],
            ["didit.update_status:Declined", "didit.blocklist:"]
        );
        assert_eq!(p.actions[1].payload["blocklist_face"], true);
        assert_eq!(p.actions[1].payload["blocklist_phone"], false);
    }

    #[test]
    fn resubmit_names_didit_nodes_and_step_up_names_the_workflow() {
        let p = run(&settings(), "resubmit", "In Review");
        assert_eq!(
            p.actions[0].payload["nodes_to_resubmit"],
            json!([{"node_id": "feature_ocr_1", "feature": "ID_VERIFICATION"}])
        );
        let p = run(&settings(), "step_up", "Approved");
        assert_eq!(p.actions[0].kind, STEP_UP);
        assert_eq!(p.actions[0].payload["workflow_id"], "wf-nfc");
        assert_eq!(p.step_up_checks, ["NFC"]);
    }

    #[test]
    fn operator_messages_have_stable_ids_and_review_is_announced() {
        let p = run(&settings(), "review", "In Review");
        let types: Vec<&str> = p
            .actions
            .iter()
            .map(|a| a.payload["body"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["decision.created", "review.required"]);
        let again = run(&settings(), "review", "In Review");
        assert_eq!(
            p.actions[0].payload["message_id"],
            again.actions[0].payload["message_id"]
        );
        assert_eq!(
            p.actions[0].idempotency_key,
            "7:operator.webhook:decision.created"
        );
    }

    #[test]
    fn nothing_is_planned_by_default_or_for_sandbox() {
        assert!(run(&ActionSettings::default(), "block", "Approved")
            .actions
            .is_empty());
        let d = decision("decline");
        let p = plan(
            &settings(),
            &PlanInput {
                decision: &d,
                previous_outcome: Some("decline"),
                didit_status: "Approved",
                sandbox: true,
                is_step_up_session: false,
                didit_decision: None,
            },
        );
        assert!(
            p.actions.is_empty(),
            "sandbox: no Didit action, unchanged outcome: no message"
        );
    }

    #[test]
    fn blocklist_items_parse() {
        let b = BlocklistItems::parse("face, phone").unwrap();
        assert!(b.face && b.phone && !b.document && !b.email);
        assert!(BlocklistItems::parse("faces").is_err());
    }
}
