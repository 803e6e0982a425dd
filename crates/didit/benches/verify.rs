//! Verification cost of a realistic ~4 KB v3 decision delivery, by scheme,
//! beside the bare cost of parsing the same body with
//! `serde_json::from_slice::<Value>` (the yardstick of issue 2: V2 should
//! cost no more than 2.5 times that parse).
//!
//! Run: `cargo bench -p didit --bench verify`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use didit::canonical::Value;
use didit::signature::{sign, Secret, SignatureHeaders, Verifier};

/// A full v3 decision with names in non-ASCII, AML hits, warnings, IP and
/// device data: what an approved-with-notes delivery looks like.
fn delivery() -> String {
    let warning = |feature: &str, risk: &str| {
        format!(
            r#"{{"additional_data":{{"score":61.2,"threshold":70}},"feature":"{feature}","log_type":"information","long_description":"The check produced a result that needs attention but did not decline the session.","node_id":"feature_{feature}_1","risk":"{risk}","short_description":"Informational risk"}}"#
        )
    };
    let hit = |i: u32| {
        format!(
            r#"{{"caption":"Jürgen Groß {i}","datasets":["PEP","Sanctions","Adverse Media"],"first_seen":"2024-0{i}-11T10:00:00.000000Z","match_score":{}.5,"pep_matches":[],"risk_score":0.3{i},"review_status":"False Positive","sanction_matches":[],"adverse_media_matches":[]}}"#,
            40 + i
        )
    };
    let body = format!(
        r#"{{"application_id":"0b6f3c2e-7d41-4a55-9a0e-3f1c2d4e5a6b","created_at":1774969994,"decision":{{"aml_screenings":[{{"entity_type":"person","hits":[{},{},{}],"node_id":"feature_aml_1","score":41.5,"screened_data":{{"date_of_birth":"1988-04-02","full_name":"Jürgen Groß","nationality":"DEU"}},"status":"Approved","total_hits":3,"warnings":[{}]}}],"created_at":"2026-03-31T15:13:14.123456Z","database_validations":null,"email_verifications":[{{"email":"juergen@example.de","is_breached":false,"is_disposable":false,"is_undeliverable":false,"node_id":"feature_email_1","status":"Approved","warnings":[]}}],"environment":"live","face_matches":[{{"node_id":"feature_face_match_1","score":91.3,"source_image":"https://media.didit.me/sessions/c3d4/face_source.jpg?X-Amz-Expires=3600&sig=a/b+c","status":"Approved","target_image":"https://media.didit.me/sessions/c3d4/face_target.jpg?X-Amz-Expires=3600","warnings":[]}}],"features":["ID_VERIFICATION","LIVENESS","FACE_MATCH","AML","IP_ANALYSIS","EMAIL"],"id_verifications":[{{"age":37,"date_of_birth":"1988-04-02","date_of_issue":"2021-01-10","document_number":"X1234567","document_type":"Passport","expiration_date":"2031-01-09","first_name":"Jürgen","full_name":"Jürgen Groß","gender":"M","issuing_state":"DEU","last_name":"Groß","mrz":"P<D<<GROSS<<JUERGEN<<<<<<<<<<<<<<<<<<<<<<<<<<","nationality":"DEU","node_id":"feature_ocr_1","personal_number":null,"portrait_image":"https://media.didit.me/sessions/c3d4/portrait.jpg?X-Amz-Expires=3600&sig=x","status":"Approved","warnings":[{}]}}],"ip_analyses":[{{"device_fingerprint":"fp_9f8e7d6c5b4a","ip_address":"85.123.45.67","ip_country_code":"DE","is_data_center":false,"is_vpn_or_tor":false,"latitude":52.52,"locations_info":{{"distance_km":12.4}},"longitude":13.405,"node_id":"feature_ip_analysis_1","platform":"ios","status":"Approved","warnings":[]}}],"liveness_checks":[{{"age_estimation":36.4,"face_luminance":0.61,"face_quality":88,"matches":[],"method":"PASSIVE","node_id":"feature_liveness_1","score":97.25,"status":"Approved","warnings":[]}}],"metadata":null,"nfc_verifications":null,"phone_verifications":null,"poa_verifications":null,"questionnaire_responses":null,"reviews":[],"session_id":"c3d4e5f6-a7b8-4c9d-8e0f-112233445566","session_number":4211,"status":"Approved","vendor_data":"user-1001"}},"environment":"live","event_id":"5f0c1d2e-3a4b-4c5d-8e9f-a0b1c2d3e4f5","metadata":{{"plan":"pro"}},"session_id":"c3d4e5f6-a7b8-4c9d-8e0f-112233445566","status":"Approved","timestamp":1774970000,"vendor_data":"user-1001","webhook_type":"status.updated","workflow_id":"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d","workflow_version":2}}"#,
        hit(1),
        hit(2),
        hit(3),
        warning("AML", "POSSIBLE_MATCH_FOUND"),
        warning("ID_VERIFICATION", "POSSIBLE_DUPLICATED_USER"),
    );
    body
}

fn bench(c: &mut Criterion) {
    let secret = Secret::new("tno2NTeRC1ZK3sBOYlBJDyEzBVENl3pQ1AcZyAW0xnQ");
    let payload = delivery();
    let signed = sign(
        &secret,
        &Value::parse(payload.as_bytes()).expect("valid payload"),
    );
    let body = signed.body.clone();
    let header = |n: &str| {
        signed
            .headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.clone())
    };
    let only = |name: &str| SignatureHeaders {
        x_signature: (name == "raw").then(|| header("X-Signature")).flatten(),
        x_signature_v2: (name == "v2").then(|| header("X-Signature-V2")).flatten(),
        x_signature_simple: (name == "simple")
            .then(|| header("X-Signature-Simple"))
            .flatten(),
        x_timestamp: header("X-Timestamp"),
    };
    let verifier = Verifier::new(vec![secret]).accept_simple(true);
    let now = 1_774_970_000;

    let mut g = c.benchmark_group("verify_4k_v3_delivery");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("serde_json_from_slice_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).expect("parses"))
    });
    for scheme in ["raw", "v2", "simple"] {
        let headers = only(scheme);
        assert!(
            verifier.verify(&body, &headers, now).is_ok(),
            "{scheme} verifies"
        );
        g.bench_function(scheme, |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(&body), black_box(&headers), now)
                    .expect("verifies")
            })
        });
    }
    g.finish();
    eprintln!("delivery body: {} bytes", body.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
