//! The payload model against every delivery in `testdata/vectors.json`
//! and `testdata/official-fixtures.json`.

use std::collections::BTreeMap;

use didit::payload::{
    Decision, Envelope, Environment, Feature, FeatureStatus, LivenessMethod, LogType, MatchSet,
    PayloadError, PayloadVersion, SessionStatus, WebhookType,
};
use serde_json::{json, Value};

/// Every delivery body, by case name (fixture names are prefixed
/// `official/`).
fn bodies() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let vectors = didit::testdata::vectors();
    for case in vectors["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name").to_owned();
        let body = case["body"].as_str().expect("body").to_owned();
        out.insert(name, body);
    }
    let fixtures = didit::testdata::official_fixtures();
    for (name, case) in fixtures.as_object().expect("fixtures") {
        let body = case["body"].as_str().expect("body").to_owned();
        out.insert(format!("official/{name}"), body);
    }
    out
}

fn body(name: &str) -> String {
    bodies()
        .remove(name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

fn envelope(name: &str) -> Envelope {
    Envelope::from_slice(body(name).as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn decision(name: &str) -> Decision {
    envelope(name)
        .decision
        .unwrap_or_else(|| panic!("{name}: no decision"))
}

/// JSON equality where `100` equals `100.0`: the model writes numbers in
/// their normal form, which is not always the literal's form.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn assert_close(actual: Option<f64>, expected: f64) {
    match actual {
        Some(x) if (x - expected).abs() < 1e-6 => {}
        other => panic!("expected {expected}, got {other:?}"),
    }
}

#[test]
fn every_delivery_parses() {
    let bodies = bodies();
    assert_eq!(bodies.len(), 20, "twelve vectors and eight fixtures");
    for (name, body) in &bodies {
        let envelope = Envelope::from_slice(body.as_bytes())
            .unwrap_or_else(|e| panic!("{name} did not parse: {e}"));
        assert_eq!(envelope.timestamp, 1_774_970_000, "{name}");
    }
}

#[test]
fn v3_deliveries_serialise_back_to_the_same_json() {
    for (name, body) in bodies() {
        let parsed = Envelope::from_slice(body.as_bytes()).expect("parses");
        if parsed
            .decision_version()
            .is_some_and(|v| v != PayloadVersion::V3)
        {
            continue; // normalised on purpose; see the next test
        }
        let original: Value = serde_json::from_str(&body).expect("json");
        let written = serde_json::to_value(&parsed).expect("serialises");
        assert!(
            same_json(&original, &written),
            "{name} changed:\n{original}\n{written}"
        );
    }
}

#[test]
fn every_delivery_reads_back_the_same_after_serialising() {
    for (name, body) in bodies() {
        let first = Envelope::from_slice(body.as_bytes()).expect("parses");
        let written = serde_json::to_vec(&first).expect("serialises");
        let mut again = Envelope::from_slice(&written).expect("parses again");
        // A normalised v2 decision is v3 once written.
        if let (Some(a), Some(b)) = (&mut again.decision, &first.decision) {
            a.version = b.version;
        }
        assert_eq!(again, first, "{name}");
    }
}

#[test]
fn a_full_v3_decision_is_typed() {
    let envelope = envelope("approved_full_decision");
    assert_eq!(envelope.webhook_type, WebhookType::StatusUpdated);
    assert!(envelope.is_session_event() && !envelope.webhook_type_inferred);
    assert_eq!(envelope.status, Some(SessionStatus::Approved));
    assert_eq!(envelope.environment, Some(Environment::Live));
    assert_eq!(envelope.workflow_version, Some(2));
    assert_eq!(envelope.created_at, Some(1_774_969_994));
    assert_eq!(envelope.metadata, Some(json!({"plan": "pro"})));
    assert_eq!(envelope.vendor_data.as_deref(), Some("user-1001"));

    let d = envelope.decision.expect("decision");
    assert_eq!(d.version, PayloadVersion::V3);
    assert_eq!(d.session_number, Some(4211));
    assert_eq!(d.created_at.as_deref(), Some("2026-03-31T15:13:14.123456Z"));
    assert_eq!(
        d.features,
        [
            "ID_VERIFICATION",
            "LIVENESS",
            "FACE_MATCH",
            "AML",
            "IP_ANALYSIS"
        ]
    );

    let id = &d.id_verifications[0];
    assert_eq!(id.document_number.as_deref(), Some("X1234567"));
    assert_eq!(id.document_type.as_deref(), Some("Passport"));
    assert_eq!(id.age, Some(37));
    assert_eq!(id.issuing_state.as_deref(), Some("DEU"));
    assert_eq!(id.full_name.as_deref(), Some("Jürgen Groß"));
    assert!(id.mrz_text().is_some_and(|m| m.starts_with("P<D<<GROSS")));
    assert_eq!(id.status, Some(FeatureStatus::Approved));
    assert_eq!(id.node_id.as_deref(), Some("feature_ocr_1"));

    let liveness = &d.liveness_checks[0];
    assert_eq!(liveness.method_kind(), Some(LivenessMethod::Passive));
    assert_close(liveness.score, 97.25);
    assert_close(liveness.age_estimation, 36.4);
    assert_close(liveness.face_quality, 88.0);
    assert!(liveness.matches.is_empty());

    assert_close(d.face_matches[0].score, 91.3);
    assert_eq!(d.aml_screenings[0].total_hits, Some(0));
    assert_close(d.aml_screenings[0].score, 0.0);
    let ip = &d.ip_analyses[0];
    assert_eq!(ip.ip_country_code.as_deref(), Some("DE"));
    assert_eq!(
        (ip.is_vpn_or_tor, ip.is_data_center),
        (Some(false), Some(false))
    );
    assert_close(ip.latitude, 52.52);

    // `null` arrays are empty, and kept as null for the round trip.
    assert!(d.nfc_verifications.is_empty() && d.questionnaire_responses.is_empty());
    assert_eq!(d.extra.get("nfc_verifications"), Some(&Value::Null));
    assert!(d.risk_codes().is_empty());
    assert_eq!(d.entries().count(), 5);
}

#[test]
fn a_delivery_without_decision_has_none() {
    let envelope = envelope("in_progress_no_decision");
    assert_eq!(envelope.status, Some(SessionStatus::InProgress));
    assert!(envelope.decision.is_none());

    let declined = envelope_named_official("declined");
    assert_eq!(declined.status, Some(SessionStatus::Declined));
    assert!(declined.decision.is_none());
}

fn envelope_named_official(name: &str) -> Envelope {
    envelope(&format!("official/{name}"))
}

#[test]
fn warnings_carry_their_risk_and_log_type() {
    let d = decision("declined_with_warnings");
    let warning = &d.liveness_checks[0].warnings[0];
    assert_eq!(warning.risk.as_deref(), Some("LIVENESS_FACE_ATTACK"));
    assert_eq!(warning.log_type, Some(LogType::Error));
    assert!(warning.declined());
    assert_eq!(warning.node_id.as_deref(), Some("feature_liveness_1"));
    assert_eq!(
        warning.short_description.as_deref(),
        Some("Presentation attack")
    );
    assert_eq!(d.liveness_checks[0].status, Some(FeatureStatus::Declined));
    let all: Vec<_> = d.all_warnings().collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, Some(Feature::Liveness));
    assert!(d.has_risk("LIVENESS_FACE_ATTACK"));
}

#[test]
fn a_resubmission_lists_the_nodes_to_redo() {
    let envelope = envelope("resubmitted");
    assert_eq!(envelope.status, Some(SessionStatus::Resubmitted));
    assert!(envelope.decision.is_none());
    let info = envelope.resubmit_info.expect("resubmit_info");
    assert_eq!(info.nodes_to_resubmit.len(), 1);
    assert_eq!(
        info.nodes_to_resubmit[0].node_id.as_deref(),
        Some("feature_ocr_1")
    );
    assert_eq!(info.nodes_to_resubmit[0].feature.as_deref(), Some("OCR"));
    assert_eq!(
        info.reasons.get("feature_ocr_1").map(String::as_str),
        Some("Blurry photo")
    );
}

#[test]
fn a_data_update_is_a_session_event() {
    let envelope = envelope("data_updated");
    assert_eq!(envelope.webhook_type, WebhookType::DataUpdated);
    assert!(envelope.is_session_event() && envelope.webhook_type.is_data_update());
    assert_eq!(
        envelope.decision.and_then(|d| d.status),
        Some(SessionStatus::Approved)
    );
}

#[test]
fn a_v2_decision_is_normalised_to_arrays() {
    let d = decision("v2_singular_decision");
    assert_eq!(d.version, PayloadVersion::V2);
    assert_eq!(d.face_matches.len(), 1);
    assert_close(d.face_matches[0].score, 73.81);
    assert_eq!(d.face_matches[0].status, Some(FeatureStatus::Approved));
    assert_close(d.liveness_checks[0].score, 100.0);
    assert_close(d.liveness_checks[0].age_estimation, 36.74);
    assert_eq!(d.ip_analyses[0].ip_country_code.as_deref(), Some("BD"));

    let id = &d.id_verifications[0];
    assert_eq!(id.document_number.as_deref(), Some("3254542032"));
    assert_eq!(id.document_type.as_deref(), Some("Identity Card"));
    assert!(id
        .portrait_image
        .as_deref()
        .is_some_and(|url| url.contains("X-Amz-Expires")));
    let warning = &id.warnings[0];
    assert!(warning.is_risk("POSSIBLE_DUPLICATED_USER"));
    assert!(warning.is_information());
    assert_eq!(
        warning
            .additional_data
            .as_ref()
            .map(|a| &a["duplicated_session_number"]),
        Some(&json!(298))
    );

    // The singular `null`s mean "no data": no entries, nothing left over.
    assert!(d.aml_screenings.is_empty() && d.nfc_verifications.is_empty());
    for key in ["aml", "nfc", "poa", "phone", "email", "database_validation"] {
        assert!(!d.extra.contains_key(key), "{key}");
    }
    assert_eq!(
        d.risk_codes().into_iter().collect::<Vec<_>>(),
        ["POSSIBLE_DUPLICATED_USER"]
    );
}

#[test]
fn a_v1_decision_is_normalised() {
    let envelope = envelope("v1_legacy_decision");
    // v1 predates `webhook_type`: it is a status update.
    assert_eq!(envelope.webhook_type, WebhookType::StatusUpdated);
    assert!(envelope.webhook_type_inferred);
    assert!(envelope.application_id.is_none() && envelope.environment.is_none());
    assert_eq!(envelope.status, Some(SessionStatus::Declined));

    let d = envelope.decision.expect("decision");
    assert_eq!(d.version, PayloadVersion::V1);
    assert_eq!(d.features, ["OCR", "FACE"]);
    assert_eq!(d.session_number, Some(43762));

    let id = &d.id_verifications[0];
    assert_eq!(id.document_number.as_deref(), Some("BK123456"));
    assert_eq!(id.expiration_date.as_deref(), Some("2026-03-24"));
    assert_eq!(id.status, Some(FeatureStatus::Approved));

    assert_close(d.face_matches[0].score, 97.99);
    assert_eq!(d.face_matches[0].status, Some(FeatureStatus::Approved));
    assert_close(d.liveness_checks[0].score, 87.99);
    assert_eq!(d.extra.get("face"), Some(&json!({"status": "Approved"})));
    assert_eq!(d.ip_analyses[0].ip_country_code.as_deref(), Some("ES"));

    let aml = &d.aml_screenings[0];
    assert_eq!(aml.status, Some(FeatureStatus::InReview));
    assert_eq!(aml.total_hits, Some(1));
    assert_close(aml.score, 70.35);
    let hit = &aml.hits[0];
    assert_eq!(hit.caption.as_deref(), Some("Kozlov Sergey Alexandrovich"));
    assert_eq!(hit.datasets, ["ru_acf_bribetakers"]);
    // 0.7034920634920635 on v1's 0–1 scale is 70.349...% on v3's.
    assert_close(hit.match_score, 70.349_206_349_206_35);
    assert!(hit.extra.contains_key("properties"));

    // The top-level warning went to the AML entry it is about.
    assert!(d.warnings.is_empty());
    assert!(aml.warnings[0].is_risk("POSSIBLE_MATCH_FOUND"));
    assert!(aml.warnings[0].sent_to_review());
    let all: Vec<_> = d.all_warnings().collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, Some(Feature::Aml));

    assert_eq!(d.reviews[0].new_status, Some(SessionStatus::Declined));
    assert!(d.reviews[0].comment.is_some());
}

#[test]
fn a_biometric_reauthentication_has_liveness_and_face_match() {
    let d = decision("biometric_reauthentication");
    assert_eq!(d.version, PayloadVersion::V3);
    assert!(d.id_verifications.is_empty());
    assert_close(d.liveness_checks[0].score, 88.4);
    let face = &d.face_matches[0];
    assert_close(face.score, 22.9);
    assert_eq!(face.status, Some(FeatureStatus::Declined));
    assert_eq!(
        face.source_image.as_deref(),
        Some("https://media.example/fm/source.jpg")
    );
    assert!(face.target_image.is_some());
    assert!(face.warnings[0].declined());
    assert!(d.has_risk("LOW_FACE_MATCH_SIMILARITY"));
}

#[test]
fn a_biometric_decision_with_singular_blocks_is_read_too() {
    let d = Decision::from_value(json!({
        "status": "Approved",
        "liveness": {"method": "FLASHING", "score": 91, "status": "Approved"},
        "face_match": {"score": 88.5, "status": "Approved"},
    }))
    .expect("parses");
    assert_eq!(d.version, PayloadVersion::V2);
    assert_eq!(
        d.liveness_checks[0].method_kind(),
        Some(LivenessMethod::Flashing)
    );
    assert_close(d.face_matches[0].score, 88.5);
}

#[test]
fn an_entity_event_has_no_session_and_keeps_its_data() {
    let envelope = envelope("entity_event_without_session");
    assert_eq!(envelope.webhook_type, WebhookType::UserStatusUpdated);
    assert!(envelope.webhook_type.is_entity_event() && !envelope.is_session_event());
    assert!(envelope.session_id.is_none() && envelope.status.is_none());
    assert!(envelope.decision.is_none());
    assert_eq!(
        envelope.data,
        Some(json!({"previous_status": "ACTIVE", "status": "BLOCKED", "vendor_data": "u-1"}))
    );
}

#[test]
fn extreme_numbers_are_kept() {
    let envelope = envelope("tiny_and_big_numbers");
    let metadata = envelope.metadata.clone().expect("metadata");
    assert_eq!(metadata["big"].as_u64(), Some(12_345_678_901_234_567_890));
    assert_eq!(metadata["neg"].as_i64(), Some(-9_007_199_254_740_993));
    let d = envelope.decision.expect("decision");
    assert_eq!(d.aml_screenings[0].hits[0].match_score, Some(1e-07));
    assert_eq!(
        d.aml_screenings[0].hits[0].risk_score,
        Some(0.300_000_000_000_000_04)
    );
    assert_eq!(d.aml_screenings[0].score, Some(5e-05));
    let liveness = &d.liveness_checks[0];
    assert_eq!(liveness.score, Some(100.0));
    assert!(liveness.extra.contains_key("huge") && liveness.extra.contains_key("big"));
}

#[test]
fn official_fixtures_are_typed() {
    let unicode = decision("official/unicode_names");
    let id = &unicode.id_verifications[0];
    assert_eq!(id.first_name.as_deref(), Some("José"));
    assert_eq!(id.last_name.as_deref(), Some("Müller-Ünlü"));
    assert_eq!(id.place_of_birth.as_deref(), Some("北京"));
    // No `warnings` key at all: an empty list, and nothing invented.
    assert!(id.warnings.is_empty() && !id.extra.contains_key("warnings"));

    let empty = decision("official/empty_objects");
    assert_eq!(
        empty.extra.get("risk_view"),
        Some(
            &json!({"countries": {"risk_scores": {}}, "crimes": {"risk_scores": {}}, "custom_list": {}})
        )
    );
    assert_eq!(
        envelope_named_official("empty_objects").metadata,
        Some(json!({}))
    );

    let slashes = decision("official/slashes_in_urls");
    assert_eq!(
        slashes.id_verifications[0].front_image.as_deref(),
        Some("https://media.didit.me/sessions/abc/front.jpg?sig=a/b+c")
    );
    assert_eq!(slashes.id_verifications[0].status, None);

    let floats = decision("official/float_scores");
    assert_close(floats.face_matches[0].score, 96.15);
    assert_close(floats.liveness_checks[0].score, 95.4);
    assert_eq!(
        floats.face_matches[0].extra.get("threshold"),
        Some(&json!(0))
    );

    let mixed = decision("official/mixed_types");
    let risks: Vec<_> = mixed
        .warnings
        .iter()
        .filter_map(|w| w.risk_code())
        .collect();
    assert_eq!(risks, ["b", "a"]);
    assert_eq!(
        mixed.risk_codes().into_iter().collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(mixed.extra.get("expiration_date"), Some(&Value::Null));
    assert_eq!(mixed.extra.get("nfc_available"), Some(&json!(true)));

    let keys = envelope_named_official("numeric_like_keys");
    assert_eq!(
        keys.metadata.as_ref().map(|m| &m["10"]),
        Some(&json!("ten"))
    );

    let basic = decision("official/basic_approved");
    assert_eq!(
        basic.id_verifications[0].status,
        Some(FeatureStatus::Approved)
    );
}

#[test]
fn unknown_fields_survive_a_round_trip() {
    let mut value: Value = serde_json::from_str(&body("approved_full_decision")).expect("json");
    value["future_envelope_field"] = json!({"nested": [1, 2.5, "x"]});
    value["decision"]["future_decision_field"] = json!(true);
    value["decision"]["liveness_checks"][0]["future_entry_field"] = json!("kept");
    value["decision"]["face_matches"][0]["warnings"] = json!([
        {"risk": "NEW_RISK", "log_type": "critical", "future_warning_field": 1}
    ]);
    value["decision"]["brand_new_checks"] = json!([{"node_id": "n"}]);

    let envelope = Envelope::from_value(value.clone()).expect("parses");
    assert!(envelope.extra.contains_key("future_envelope_field"));
    let d = envelope.decision.as_ref().expect("decision");
    assert!(d.extra.contains_key("brand_new_checks"));
    assert_eq!(
        d.liveness_checks[0].extra.get("future_entry_field"),
        Some(&json!("kept"))
    );
    let warning = &d.face_matches[0].warnings[0];
    assert_eq!(
        warning.log_type,
        Some(LogType::Other("critical".to_owned()))
    );
    assert!(warning.extra.contains_key("future_warning_field"));

    let written = serde_json::to_value(&envelope).expect("serialises");
    assert!(same_json(&value, &written), "{value}\n{written}");
}

#[test]
fn an_unknown_status_is_kept() {
    let mut value: Value = serde_json::from_str(&body("approved_full_decision")).expect("json");
    value["status"] = json!("Frozen");
    value["decision"]["status"] = json!("Frozen");
    value["decision"]["id_verifications"][0]["status"] = json!("Pending Chip");
    let envelope = Envelope::from_value(value.clone()).expect("parses");
    assert_eq!(
        envelope.status,
        Some(SessionStatus::Other("Frozen".to_owned()))
    );
    let d = envelope.decision.as_ref().expect("decision");
    assert_eq!(d.status.as_ref().map(SessionStatus::as_str), Some("Frozen"));
    assert_eq!(
        d.id_verifications[0].status,
        Some(FeatureStatus::Other("Pending Chip".to_owned()))
    );
    let written = serde_json::to_value(&envelope).expect("serialises");
    assert_eq!(written["status"], json!("Frozen"));
    assert!(same_json(&value, &written));
}

#[test]
fn unknown_webhook_types_are_kept() {
    let envelope =
        Envelope::from_value(json!({"webhook_type": "session.verified", "timestamp": 1}))
            .expect("parses");
    assert_eq!(
        envelope.webhook_type,
        WebhookType::Other("session.verified".to_owned())
    );
    assert!(!envelope.is_session_event());
}

#[test]
fn missing_required_fields_are_clear_errors() {
    let mut value: Value =
        serde_json::from_str(&body("entity_event_without_session")).expect("json");
    value
        .as_object_mut()
        .expect("object")
        .remove("webhook_type");
    assert_eq!(
        Envelope::from_value(value).map(|_| ()),
        Err(PayloadError::MissingField {
            field: "webhook_type"
        })
    );

    let mut value: Value = serde_json::from_str(&body("approved_full_decision")).expect("json");
    value.as_object_mut().expect("object").remove("timestamp");
    let err = Envelope::from_value(value).map(|_| ()).expect_err("fails");
    assert_eq!(err, PayloadError::MissingField { field: "timestamp" });
    assert_eq!(err.to_string(), "payload has no `timestamp` field");

    assert_eq!(
        Envelope::from_slice(b"[1, 2]").map(|_| ()),
        Err(PayloadError::NotAnObject { field: "payload" })
    );
}

#[test]
fn error_messages_never_include_values() {
    let secret = "Jürgen Groß X1234567";
    let cases = [
        json!({"webhook_type": "status.updated", "timestamp": secret}),
        json!({"webhook_type": {"name": secret}, "timestamp": 1}),
        json!({"first_name": secret, "timestamp": 1}),
        json!([secret]),
    ];
    for case in cases {
        let err = Envelope::from_value(case.clone())
            .map(|_| ())
            .expect_err("fails");
        let message = err.to_string();
        assert!(
            !message.contains("Jürgen") && !message.contains("X1234567"),
            "{message}"
        );
        assert!(!format!("{err:?}").contains("X1234567"));

        // The same through serde, as an embedding struct would see it.
        let via_serde = serde_json::from_value::<Envelope>(case)
            .map(|_| ())
            .expect_err("fails")
            .to_string();
        assert!(!via_serde.contains("X1234567"), "{via_serde}");
    }

    let truncated = format!(r#"{{"first_name":"{secret}"#);
    let message = Envelope::from_slice(truncated.as_bytes())
        .map(|_| ())
        .expect_err("fails")
        .to_string();
    assert!(!message.contains("X1234567"), "{message}");
}

#[test]
fn a_mistyped_optional_field_does_not_reject_the_delivery() {
    let envelope = Envelope::from_value(json!({
        "webhook_type": "status.updated",
        "timestamp": "1774970000",
        "session_id": "s",
        "status": 7,
        "decision": {
            "face_matches": [{"score": "73.81", "status": "Approved"}],
            "aml_screenings": [{"total_hits": "2", "hits": [{"match_score": "oops", "pep_matches": 1}]}],
            "liveness_checks": "not an array",
        },
    }))
    .expect("parses");
    assert_eq!(envelope.timestamp, 1_774_970_000);
    assert_eq!(envelope.status, None);
    assert_eq!(envelope.extra.get("status"), Some(&json!(7)));
    let d = envelope.decision.expect("decision");
    assert_close(d.face_matches[0].score, 73.81);
    assert_eq!(d.aml_screenings[0].total_hits, Some(2));
    let hit = &d.aml_screenings[0].hits[0];
    assert_eq!(hit.match_score, None);
    assert_eq!(hit.extra.get("match_score"), Some(&json!("oops")));
    assert_eq!(hit.pep_matches, Some(MatchSet::Count(1)));
    assert!(d.liveness_checks.is_empty());
    assert_eq!(d.extra.get("liveness_checks"), Some(&json!("not an array")));
}

#[test]
fn a_decision_body_from_the_api_parses_alone() {
    let value: Value = serde_json::from_str(&body("approved_full_decision")).expect("json");
    let bytes = serde_json::to_vec(&value["decision"]).expect("bytes");
    let d = Decision::from_slice(&bytes).expect("parses");
    assert_eq!(d.status, Some(SessionStatus::Approved));
    assert_eq!(
        d.session_id.as_deref(),
        Some("c3d4e5f6-a7b8-4c9d-8e0f-112233445566")
    );
    let typed: Decision = serde_json::from_slice(&bytes).expect("through serde");
    assert_eq!(typed, d);
}
