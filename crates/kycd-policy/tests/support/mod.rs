//! Shared helpers for the integration tests.

use serde_json::Value;

/// The golden cases' `[base]`: a clean, approved session.
pub fn clean_facts() -> Value {
    let cases: Value = toml::from_str(include_str!("../cases/default.toml")).expect("cases parse");
    cases["base"].clone()
}

/// `facts` with `patch` merged in (objects recursively, leaves replaced).
pub fn with(mut facts: Value, patch: Value) -> Value {
    merge(&mut facts, patch);
    facts
}

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

/// A tiny deterministic generator (xorshift), so that randomised tests
/// replay exactly. Used by the differential tests (`zen-reference`).
#[cfg_attr(not(feature = "zen-reference"), allow(dead_code))]
pub struct Rng(u64);

#[cfg_attr(not(feature = "zen-reference"), allow(dead_code))]
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}
