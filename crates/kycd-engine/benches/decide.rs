//! Decisions per second per core: facts building plus policy evaluation on
//! realistic facts, beside the policy's (ZEN) evaluation alone on the same
//! facts, and the whole per-event path including parsing the stored body.
//!
//! Run: `cargo bench -p kycd-engine --bench decide`. Every figure is for one
//! decision on one core (criterion runs single-threaded), so decisions per
//! second per core = 1 / time.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use didit::payload::Envelope;
use kycd_engine::facts::{build, FactsInput, GraphSignals};
use kycd_policy::Policy;
use serde_json::Value;

const NOW_MS: i64 = 1_774_970_000_000;

/// The vectors that carry a decision: a full v3 approval, a v2 and a v1
/// decision, a declined liveness attack, a biometric re-authentication.
fn bodies() -> Vec<Vec<u8>> {
    let v: Value = didit::testdata::vectors();
    v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| {
            [
                "approved_full_decision",
                "v2_singular_decision",
                "v1_legacy_decision",
                "declined_with_warnings",
                "biometric_reauthentication",
            ]
            .contains(&c["name"].as_str().unwrap_or(""))
        })
        .map(|c| c["body"].as_str().unwrap_or("").as_bytes().to_vec())
        .collect()
}

fn facts_of(env: &Envelope) -> Value {
    build(&FactsInput {
        now_ms: NOW_MS,
        session_id: env.session_id.as_deref().unwrap_or(""),
        didit_status: env.status.as_ref().map(|s| s.as_str()).unwrap_or(""),
        webhook_type: env.webhook_type.as_str(),
        workflow_id: env.workflow_id.as_deref(),
        sandbox: false,
        decision: env.decision.as_ref().expect("a decision"),
        subject: env.vendor_data.as_deref(),
        attributes: None,
        graph: GraphSignals {
            document_subjects: 1,
            ..GraphSignals::default()
        },
        step_up: None,
        is_step_up_session: false,
    })
}

fn bench(c: &mut Criterion) {
    let policy = Policy::builtin_default();
    let bodies = bodies();
    let envs: Vec<Envelope> = bodies
        .iter()
        .map(|b| Envelope::from_slice(b).expect("parses"))
        .collect();
    let facts: Vec<Value> = envs.iter().map(facts_of).collect();
    let n = envs.len() as u32;

    let mut g = c.benchmark_group("decide_per_decision");
    g.bench_function("policy_evaluate_only", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % facts.len();
            black_box(policy.evaluate(black_box(&facts[i])))
        })
    });
    g.bench_function("facts_build_plus_evaluate", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % envs.len();
            let f = facts_of(black_box(&envs[i]));
            black_box(policy.evaluate(&f))
        })
    });
    g.bench_function("parse_build_evaluate", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            let env = Envelope::from_slice(black_box(&bodies[i])).expect("parses");
            let f = facts_of(&env);
            black_box(policy.evaluate(&f))
        })
    });
    g.finish();
    eprintln!("rotating over {n} decisions");
}

criterion_group!(benches, bench);
criterion_main!(benches);
