//! Seeded randomness and the ids made from it.
//!
//! Everything the simulator invents comes from a ChaCha8 stream derived from
//! the run's seed and a label naming what the stream is for (`"customer"`
//! and the customer's number, `"delivery"` and the event id, ...). Each
//! customer and each delivery owns its stream, so the order in which tokio
//! happens to run them cannot change what they draw: the same seed gives
//! the same scenarios, ids and decisions.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) type SimRng = ChaCha8Rng;

/// FNV-1a over the parts, with a separator byte between them so that
/// `("ab", "c")` and `("a", "bc")` differ. Stable across Rust releases,
/// unlike std's hashers.
fn fnv(seed: u64, parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for byte in seed.to_le_bytes() {
        eat(byte);
    }
    for part in parts {
        eat(0xff);
        for byte in part.as_bytes() {
            eat(*byte);
        }
    }
    hash
}

/// The stream for `label` and `key` under `seed`.
pub(crate) fn rng_for(seed: u64, label: &str, key: &str) -> SimRng {
    SimRng::seed_from_u64(fnv(seed, &[label, key]))
}

/// A random (version 4 shaped) UUID in its usual text form.
pub(crate) fn uuid(rng: &mut SimRng) -> String {
    let mut b: [u8; 16] = rng.gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A UUID fixed by `seed` and the parts, for ids that must not depend on
/// any stream's position (event ids).
pub(crate) fn derived_uuid(seed: u64, label: &str, key: &str) -> String {
    uuid(&mut rng_for(seed, label, key))
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` random letters and digits.
pub(crate) fn alnum(rng: &mut SimRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(ALNUM[rng.gen_range(0..ALNUM.len())]))
        .collect()
}

/// `len` random decimal digits.
pub(crate) fn digits(rng: &mut SimRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// Rounds to two decimals, as Didit's scores are.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A uniformly drawn score with two decimals in `[lo, hi]`.
pub(crate) fn score(rng: &mut SimRng, lo: f64, hi: f64) -> f64 {
    round2(rng.gen_range(lo..=hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_fixed_by_seed_and_label() {
        let a = uuid(&mut rng_for(7, "customer", "1"));
        let b = uuid(&mut rng_for(7, "customer", "1"));
        let c = uuid(&mut rng_for(7, "customer", "2"));
        let d = uuid(&mut rng_for(8, "customer", "1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn uuids_have_the_version_4_shape() {
        let id = uuid(&mut rng_for(1, "x", "y"));
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn label_boundaries_matter() {
        assert_ne!(fnv(1, &["ab", "c"]), fnv(1, &["a", "bc"]));
    }
}
