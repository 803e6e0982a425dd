//! Policy evaluation alone (facts already built), on the built-in default
//! policy (38 rules, 2 decision tables) over representative fact documents.
//!
//! `evaluate/*` is the production path (tables evaluated directly from
//! compiled cells). `evaluate_zen_graph/*` is the same evaluation with the
//! tables run through zen-engine's graph evaluator, for comparison; it is
//! there only with the `zen-reference` feature.
//!
//! Run: `cargo bench -p kycd-policy --bench evaluate` (add
//! `--features zen-reference` for `evaluate_zen_graph/*`)

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kycd_policy::Policy;
use serde_json::{json, Value};

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, patch) => *slot = patch,
    }
}

/// The documents: a clean approval, a risky approval by Didit that the
/// policy sends to review, a fraud attempt Didit declined, and a clean
/// session whose operator attributes are large.
fn documents() -> Vec<(&'static str, Value)> {
    let cases: Value = toml::from_str(include_str!("../tests/cases/default.toml"))
        .expect("the golden cases parse");
    let base = cases["base"].clone();
    let patch = |p: Value| {
        let mut facts = base.clone();
        merge(&mut facts, p);
        facts
    };
    let mut attributes = serde_json::Map::new();
    for i in 0..40 {
        attributes.insert(
            format!("field_{i:02}"),
            json!({"value": format!("operator value {i}"), "since": 2019 + i % 6, "tags": ["a", "b"]}),
        );
    }
    vec![
        ("clean", base.clone()),
        (
            "risky",
            patch(json!({
                "document": {"issuing_country": "VNM", "nationality": "VNM"},
                "ip": {"country": "NL", "vpn_or_tor": true, "country_mismatch": true},
                "aml": {"total_hits": 2, "max_match_score": 91.5, "pep": true},
                "phone": {"disposable": true},
                "email": {"breached": true},
                "graph": {"device_subjects": 2, "prior_declines": 1},
                "face_match": {"score": 66.2},
            })),
        ),
        (
            "declined_fraud",
            patch(json!({
                "session": {"didit_status": "Declined"},
                "didit": {
                    "risks": ["LIVENESS_FACE_ATTACK", "PORTRAIT_MANIPULATION_DETECTED", "SCREEN_CAPTURE_DETECTED"],
                    "declining_risks": ["LIVENESS_FACE_ATTACK", "PORTRAIT_MANIPULATION_DETECTED"],
                    "review_risks": ["SCREEN_CAPTURE_DETECTED"]
                },
                "document": {"status": "Declined", "tampering": true},
                "liveness": {"status": "Declined", "score": 8.5, "attack": true},
                "graph": {"document_subjects": 3, "duplicate_face": true},
            })),
        ),
        (
            "large_attributes",
            patch(json!({"subject": {"attributes": Value::Object(attributes)}})),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let policy = Policy::builtin_default();
    let docs = documents();

    let mut group = c.benchmark_group("evaluate");
    for (name, facts) in &docs {
        group.bench_function(*name, |b| b.iter(|| policy.evaluate(black_box(facts))));
    }
    group.finish();

    // `cargo bench --workspace --features kycd-policy/zen-reference --bench evaluate`
    #[cfg(feature = "zen-reference")]
    {
        let mut group = c.benchmark_group("evaluate_zen_graph");
        for (name, facts) in &docs {
            group.bench_function(*name, |b| {
                b.iter(|| policy.evaluate_reference(black_box(facts)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
