//! What goes on the wire: the v3 envelope (docs/didit-protocol.md 1.5), its v2 and v1
//! renderings for destinations on those versions, and signing with
//! `didit::signature::sign`, which writes the canonical body and all the
//! headers Didit sends.

use didit::canonical::Value as Canonical;
use didit::signature::{sign, Secret, Signed};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::decision::Feat;

/// The payload version of a webhook destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookVersion {
    /// Early 2025: `kyc`, `aml`, `face`, `location` and top-level
    /// `warnings`; no `webhook_type` or `event_id`.
    V1,
    /// Singular feature objects (`id_verification`, `liveness`, ...).
    V2,
    /// The current version: one array per feature.
    #[default]
    V3,
}

impl WebhookVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookVersion::V1 => "v1",
            WebhookVersion::V2 => "v2",
            WebhookVersion::V3 => "v3",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "v1" => Some(WebhookVersion::V1),
            "v2" => Some(WebhookVersion::V2),
            "v3" => Some(WebhookVersion::V3),
            _ => None,
        }
    }
}

/// The body for a destination on `version`, from the v3 envelope. `None`
/// when that version has no such delivery (v1 predates `data.updated`).
pub(crate) fn render(
    v3: &Map<String, Value>,
    version: WebhookVersion,
) -> Option<Map<String, Value>> {
    match version {
        WebhookVersion::V3 => Some(v3.clone()),
        WebhookVersion::V2 => {
            let mut out = v3.clone();
            if let Some(Value::Object(decision)) = out.get_mut("decision") {
                to_v2(decision);
            }
            Some(out)
        }
        WebhookVersion::V1 => {
            if v3.get("webhook_type").and_then(Value::as_str) != Some("status.updated") {
                return None;
            }
            let mut out = Map::new();
            for key in [
                "created_at",
                "session_id",
                "status",
                "vendor_data",
                "resubmit_info",
            ] {
                if let Some(value) = v3.get(key) {
                    out.insert(key.to_owned(), value.clone());
                }
            }
            if let Some(Value::Object(decision)) = v3.get("decision") {
                out.insert("decision".to_owned(), Value::Object(to_v1(decision)));
            }
            Some(out)
        }
    }
}

/// Strips `node_id` from an entry and its warnings: the older versions had
/// one node per feature and did not name it.
fn without_node_ids(entry: &Value) -> Value {
    let mut entry = entry.clone();
    if let Value::Object(map) = &mut entry {
        map.remove("node_id");
        if let Some(Value::Array(warnings)) = map.get_mut("warnings") {
            for w in warnings {
                if let Value::Object(w) = w {
                    w.remove("node_id");
                }
            }
        }
    }
    entry
}

fn first_entry(decision: &Map<String, Value>, feat: Feat) -> Option<&Value> {
    decision
        .get(feat.array_key())
        .and_then(Value::as_array)
        .and_then(|a| a.first())
}

/// v3 arrays become v2 singular objects (or `null`).
fn to_v2(decision: &mut Map<String, Value>) {
    for feat in Feat::ALL {
        let Some(key) = feat.v2_key() else { continue };
        let single = first_entry(decision, feat)
            .map(without_node_ids)
            .unwrap_or(Value::Null);
        decision.remove(feat.array_key());
        decision.insert(key.to_owned(), single);
    }
    decision.remove("database_validations");
    decision.insert("database_validation".to_owned(), Value::Null);
}

/// The v1 (early 2025) decision: `kyc`, `face`, `aml`, `location`, a
/// `features` string and every warning at the top level.
fn to_v1(decision: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for key in [
        "session_id",
        "session_number",
        "session_url",
        "status",
        "created_at",
        "vendor_data",
        "reviews",
    ] {
        if let Some(value) = decision.get(key) {
            out.insert(key.to_owned(), value.clone());
        }
    }
    let listed: Vec<&str> = decision
        .get("features")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut names: Vec<&str> = Vec::new();
    for feature in listed {
        let name = match feature {
            "ID_VERIFICATION" => "OCR",
            "LIVENESS" | "FACE_MATCH" => "FACE",
            "AML" => "AML",
            "IP_ANALYSIS" => "IP",
            _ => continue,
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    out.insert("features".to_owned(), Value::from(names.join(" + ")));

    let mut warnings = Vec::new();
    let mut take_warnings = |entry: &Value, tag: &str| {
        for w in entry["warnings"].as_array().into_iter().flatten() {
            let mut w = without_node_ids(w);
            if let Value::Object(map) = &mut w {
                map.insert("feature".to_owned(), Value::from(tag));
            }
            warnings.push(w);
        }
    };

    let strip = |entry: &Value, drop: &[&str]| -> Value {
        let mut e = without_node_ids(entry);
        if let Value::Object(map) = &mut e {
            for key in drop {
                map.remove(*key);
            }
        }
        e
    };
    if let Some(id) = first_entry(decision, Feat::Id) {
        take_warnings(id, "OCR");
        out.insert("kyc".to_owned(), strip(id, &["warnings"]));
    }
    let liveness = first_entry(decision, Feat::Liveness);
    let face_match = first_entry(decision, Feat::FaceMatch);
    if liveness.is_some() || face_match.is_some() {
        let mut face = Map::new();
        let mut statuses = Vec::new();
        if let Some(l) = liveness {
            take_warnings(l, "LIVENESS");
            face.insert("liveness_confidence".into(), l["score"].clone());
            face.insert("liveness_status".into(), l["status"].clone());
            statuses.push(l["status"].as_str().unwrap_or("Approved").to_owned());
        }
        if let Some(f) = face_match {
            take_warnings(f, "FACE");
            face.insert("face_match_similarity".into(), f["score"].clone());
            face.insert("face_match_status".into(), f["status"].clone());
            statuses.push(f["status"].as_str().unwrap_or("Approved").to_owned());
        }
        let status = crate::decision::overall_status(statuses.iter().map(String::as_str));
        face.insert("status".into(), Value::from(status));
        out.insert("face".to_owned(), Value::Object(face));
    }
    if let Some(aml) = first_entry(decision, Feat::Aml) {
        take_warnings(aml, "AML");
        let mut aml = strip(aml, &["warnings", "screened_data", "entity_type"]);
        // v1 gave a hit's match as `score` on a 0-1 scale.
        if let Some(Value::Array(hits)) = aml.get_mut("hits") {
            for hit in hits {
                let match_score = hit["match_score"].as_f64().unwrap_or(0.0);
                *hit = serde_json::json!({
                    "id": hit["id"],
                    "caption": hit["caption"],
                    "datasets": hit["datasets"],
                    "match": false,
                    "properties": hit["properties"],
                    "score": match_score / 100.0,
                });
            }
        }
        out.insert("aml".to_owned(), aml);
    }
    if let Some(ip) = first_entry(decision, Feat::Ip) {
        take_warnings(ip, "LOCATION");
        out.insert("location".to_owned(), strip(ip, &["warnings"]));
    }
    out.insert("warnings".to_owned(), Value::Array(warnings));
    out
}

/// Signs `body` as Didit does: canonical ASCII body, `X-Signature`,
/// `X-Signature-V2`, `X-Signature-Simple`, `X-Timestamp`, `User-Agent`.
pub(crate) fn sign_body(secret: &Secret, body: &Map<String, Value>) -> anyhow::Result<Signed> {
    let bytes = serde_json::to_vec(body)?;
    let value = Canonical::parse(&bytes)?;
    Ok(sign(secret, &value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use didit::payload::{Decision, Envelope, PayloadVersion};
    use didit::signature::{SignatureHeaders, Verifier};
    use serde_json::json;

    fn v3() -> Map<String, Value> {
        let decision = json!({
            "session_id": "s", "session_number": 7, "status": "Declined",
            "features": ["ID_VERIFICATION", "LIVENESS", "FACE_MATCH", "AML", "IP_ANALYSIS"],
            "id_verifications": [{"node_id": "feature_ocr_1", "status": "Approved", "document_number": "X1", "issuing_state": "DEU", "warnings": []}],
            "liveness_checks": [{"node_id": "feature_liveness_1", "status": "Declined", "score": 12.5, "warnings": [
                {"feature": "LIVENESS", "risk": "LIVENESS_FACE_ATTACK", "log_type": "error", "node_id": "feature_liveness_1", "additional_data": null, "short_description": "a", "long_description": "b"}
            ]}],
            "face_matches": [{"node_id": "feature_face_match_1", "status": "Approved", "score": 91.0, "warnings": []}],
            "aml_screenings": [{"node_id": "feature_aml_1", "status": "In Review", "score": 70.0, "total_hits": 1,
                "hits": [{"id": "h", "caption": "X", "datasets": ["us_ofac_sdn"], "match_score": 70.0}], "warnings": []}],
            "ip_analyses": [{"node_id": "feature_ip_analysis_1", "status": "Approved", "ip_country_code": "DE", "warnings": []}],
            "phone_verifications": null,
        });
        let envelope = json!({
            "application_id": "a", "created_at": 1, "decision": decision, "environment": "sandbox",
            "event_id": "e", "session_id": "s", "status": "Declined", "vendor_data": "user-1",
            "webhook_type": "status.updated", "workflow_id": "w", "workflow_version": 1, "timestamp": 2,
        });
        match envelope {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn v2_has_singular_objects_that_kycd_reads_back() {
        let body = render(&v3(), WebhookVersion::V2).unwrap();
        let decision = &body["decision"];
        assert!(decision.get("liveness_checks").is_none());
        assert_eq!(decision["liveness"]["score"], json!(12.5));
        assert!(decision["liveness"].get("node_id").is_none());
        assert_eq!(decision["phone"], Value::Null);
        let parsed = Decision::from_value(decision.clone()).unwrap();
        assert_eq!(parsed.version, PayloadVersion::V2);
        assert!(parsed.has_risk("LIVENESS_FACE_ATTACK"));
        assert_eq!(parsed.face_matches[0].score, Some(91.0));
    }

    #[test]
    fn v2_carries_the_nfc_entry_as_a_singular_object() {
        let mut body = v3();
        if let Some(Value::Object(d)) = body.get_mut("decision") {
            d.insert(
                "nfc_verifications".into(),
                json!([{"node_id": "feature_nfc_1", "status": "Approved", "chip_read": true,
                        "document_number": "X1", "warnings": []}]),
            );
        }
        let v2 = render(&body, WebhookVersion::V2).unwrap();
        let decision = &v2["decision"];
        assert!(decision.get("nfc_verifications").is_none());
        assert_eq!(decision["nfc"]["chip_read"], json!(true));
        assert!(decision["nfc"].get("node_id").is_none());
        let parsed = Decision::from_value(decision.clone()).unwrap();
        assert_eq!(parsed.nfc_verifications.len(), 1);
        let without = render(&v3(), WebhookVersion::V2).unwrap();
        assert_eq!(without["decision"]["nfc"], Value::Null);
    }

    #[test]
    fn v1_has_legacy_blocks_and_top_level_warnings_that_kycd_reads_back() {
        let body = render(&v3(), WebhookVersion::V1).unwrap();
        assert!(body.get("webhook_type").is_none());
        assert!(body.get("event_id").is_none());
        let decision = &body["decision"];
        assert_eq!(decision["features"], json!("OCR + FACE + AML + IP"));
        assert_eq!(decision["face"]["liveness_status"], json!("Declined"));
        assert_eq!(decision["face"]["status"], json!("Declined"));
        assert_eq!(decision["aml"]["hits"][0]["score"], json!(0.7));
        assert_eq!(decision["warnings"][0]["feature"], json!("LIVENESS"));
        let mut with_ts = body.clone();
        with_ts.insert("timestamp".into(), json!(2));
        let envelope = Envelope::from_value(Value::Object(with_ts)).unwrap();
        let parsed = envelope.decision.unwrap();
        assert_eq!(parsed.version, PayloadVersion::V1);
        assert_eq!(parsed.liveness_checks[0].warnings.len(), 1);
        assert_eq!(parsed.aml_screenings[0].hits[0].match_score, Some(70.0));
        assert_eq!(
            parsed.id_verifications[0].document_number.as_deref(),
            Some("X1")
        );
    }

    #[test]
    fn v1_has_no_data_updated() {
        let mut body = v3();
        body.insert("webhook_type".into(), json!("data.updated"));
        assert!(render(&body, WebhookVersion::V1).is_none());
    }

    #[test]
    fn signed_bodies_verify_by_the_raw_signature() {
        let mut body = v3();
        body.insert("metadata".into(), json!({"name": "Jürgen", "n": 100.0}));
        let secret = Secret::new("k");
        let signed = sign_body(&secret, &body).unwrap();
        assert!(signed.body.is_ascii());
        let headers =
            SignatureHeaders::from_pairs(signed.headers.iter().map(|(k, v)| (*k, v.as_str())));
        let verified = Verifier::new(vec![Secret::new("k")])
            .verify(&signed.body, &headers, 2)
            .unwrap();
        assert_eq!(verified.scheme, didit::signature::Scheme::Raw);
        let text = String::from_utf8(signed.body).unwrap();
        assert!(text.contains("\"n\":100"), "{text}");
    }
}
