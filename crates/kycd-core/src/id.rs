//! Typed, prefixed identifiers (`evt_…`), sortable by creation time.
//!
//! The body is 26 characters of Crockford base32 over 48 bits of
//! milliseconds and 80 random bits (the ULID layout), so ids sort by the time
//! they were minted and never collide in practice.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Mint the 26-character ULID body for `millis` and fresh randomness.
pub fn ulid_body(millis: i64) -> String {
    let mut rnd = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut rnd);
    let mut value: u128 = (u128::from(millis.max(0) as u64) & 0xFFFF_FFFF_FFFF) << 80;
    for (i, b) in rnd.iter().enumerate() {
        value |= u128::from(*b) << (8 * (9 - i));
    }
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 5 * (25 - i);
        *slot = CROCKFORD[((value >> shift) & 0x1F) as usize];
    }
    // Safe: every byte comes from the ASCII alphabet above.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

fn valid_body(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| CROCKFORD.contains(&b))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} id")]
pub struct InvalidId {
    pub kind: &'static str,
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new id minted at `millis` (Unix milliseconds).
            pub fn new(millis: i64) -> Self {
                Self(format!("{}{}", $prefix, ulid_body(millis)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.strip_prefix($prefix) {
                    Some(body) if valid_body(body) => Ok(Self(s.to_owned())),
                    _ => Err(InvalidId { kind: stringify!($name) }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// kycd's own id for an event in its log (not Didit's `event_id`).
    EventId,
    "evt_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let a = EventId::new(1_774_970_000_000);
        let b = EventId::new(1_774_970_000_001);
        assert!(a < b);
        assert_eq!(a.as_str().len(), 30);
        assert_eq!(a.as_str().parse::<EventId>().unwrap(), a);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        assert!("evt_short".parse::<EventId>().is_err());
        assert!("dec_01ARZ3NDEKTSV4RRFFQ69G5FAV".parse::<EventId>().is_err());
        assert!("evt_01ARZ3NDEKTSV4RRFFQ69G5FAU".parse::<EventId>().is_err());
    }
}
