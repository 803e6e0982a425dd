//! Which partition projects an event (docs/cluster-design.md, section 1).
//!
//! A session's events go to one partition, its *home*, chosen from the
//! customer: the operator's `vendor_data` when the event carries one, else
//! the session id, so that one customer's sessions (step-ups, earlier
//! declines, subject attributes, blocklist re-decisions) are projected
//! together. The choice is made once, by the session's first event, and
//! kept (`session_routes` on a database log): a `vendor_data` that only a
//! later delivery carries does not move the session. Events that every
//! partition must see (a policy activation, an audit anchor) have no
//! partition.
//!
//! The hash is stable across releases and machines: the first 16 bytes of
//! SHA-256 over a domain tag and the key, read big-endian, and the
//! partition is its top 64 bits scaled to N (ranges, not modulo, so
//! doubling N splits every range in two and the ranges tile the 128-bit
//! hash-key space that Kinesis shards use).

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::log::{EventSource, NewEvent};

/// The domain tag hashed before every key.
const DOMAIN: &[u8] = b"kycd/route/v1";

/// The metadata key naming a step-up session's original (set by kycd when
/// it creates the step-up, echoed by Didit in every delivery): a step-up
/// session is homed with its original, which completes it.
pub const STEP_UP_OF_META: &str = "kycd_step_up_of";

/// The most partitions a cluster may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// The 128-bit route hash of `key`.
pub fn hash(key: &str) -> u128 {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update([0u8]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// The partition of hash `h` among `n` (at least 1).
pub fn partition_of(h: u128, n: u32) -> u32 {
    let top = (h >> 64) as u64;
    ((u128::from(top) * u128::from(n.max(1))) >> 64) as u32
}

/// Where an event goes before its session's stored home is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Every partition reads it.
    All,
    /// A session's event: its home if it has one, else its original's
    /// (`follows`, a step-up's) if that has one, else `first`.
    Session {
        session_id: String,
        first: u32,
        follows: Option<String>,
    },
    /// A subject's write: the partition of its `vendor_data`.
    Partition(u32),
}

impl Route {
    /// The partition, given the session's stored home (`None` for an event
    /// every partition reads).
    pub fn resolve(&self, home: Option<u32>) -> Option<u32> {
        match self {
            Route::All => None,
            Route::Session { first, .. } => Some(home.unwrap_or(*first)),
            Route::Partition(k) => Some(*k),
        }
    }

    /// The session whose home this event may follow when its own session
    /// has none yet.
    pub fn follows(&self) -> Option<&str> {
        match self {
            Route::Session { follows, .. } => follows.as_deref(),
            _ => None,
        }
    }
}

/// The fields of a body that route it; everything else is skipped unread.
#[derive(Deserialize)]
struct Routing {
    #[serde(default)]
    vendor_data: Option<serde_json::Value>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// A body's `vendor_data` and the original its metadata names.
fn routing(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(r) = serde_json::from_slice::<Routing>(body) else {
        return (None, None);
    };
    let text = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    (
        text(r.vendor_data.as_ref()),
        text(r.metadata.as_ref().and_then(|m| m.get(STEP_UP_OF_META))),
    )
}

/// How `event` routes among `n` partitions.
pub fn route(event: &NewEvent, n: u32) -> Route {
    let key_partition = |key: &str| partition_of(hash(key), n);
    match (event.source, &event.session_id) {
        // One partition: nothing to choose, nothing to parse or keep.
        (EventSource::Subject, _) | (_, Some(_)) if n <= 1 => Route::Partition(0),
        (EventSource::Subject, _) => match routing(&event.body).0 {
            Some(v) => Route::Partition(key_partition(&v)),
            None => Route::All,
        },
        // kycd's own events about no session (a policy activation, an
        // anchor, an endpoint disabled) and Didit's events about no
        // session (never projected) are read by every partition.
        (_, None) => Route::All,
        (source, Some(session_id)) => {
            let (vendor, follows) = match source {
                EventSource::Webhook | EventSource::Polled => routing(&event.body),
                // kycd's own events about a session follow its home.
                _ => (None, None),
            };
            Route::Session {
                session_id: session_id.clone(),
                first: key_partition(vendor.as_deref().unwrap_or(session_id)),
                follows: follows.filter(|o| o != session_id),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: EventSource, session: Option<&str>, body: &str) -> NewEvent {
        NewEvent {
            received_at_ms: 0,
            source,
            kind: "status.updated".into(),
            session_id: session.map(str::to_owned),
            didit_event_id: None,
            dedupe_keys: Vec::new(),
            body: body.as_bytes().to_vec(),
            meta: serde_json::json!({}),
        }
    }

    #[test]
    fn the_hash_and_the_ranges_are_pinned() {
        // docs/cluster-design.md, section 1; python3's hashlib agrees.
        assert_eq!(hash("user-1"), 0xe0fef0db99e05e8f13ac379f412682e2);
        assert_eq!(partition_of(hash("user-1"), 64), 56);
        assert_eq!(partition_of(hash("user-1"), 16), 14);
        let id = "3f6c2a9e-0c1d-4b7a-9a55-2f1e8d7c6b5a";
        assert_eq!(partition_of(hash(id), 64), 18);
        assert_eq!(partition_of(hash(id), 16), 4);
        assert_eq!(partition_of(u128::MAX, 64), 63);
        assert_eq!(partition_of(0, 64), 0);
        assert_eq!(partition_of(hash("anything"), 1), 0);
    }

    #[test]
    fn doubling_the_partitions_splits_each_range() {
        for i in 0..1000 {
            let h = hash(&format!("customer-{i}"));
            assert_eq!(partition_of(h, 32) / 2, partition_of(h, 16));
        }
    }

    #[test]
    fn a_customer_routes_by_vendor_data_else_by_session() {
        let with = event(
            EventSource::Webhook,
            Some("s-1"),
            r#"{"session_id":"s-1","vendor_data":"user-1","decision":{"x":[1,2]}}"#,
        );
        let k = partition_of(hash("user-1"), 64);
        assert_eq!(
            route(&with, 64),
            Route::Session {
                session_id: "s-1".into(),
                first: k,
                follows: None,
            }
        );
        // A step-up session names its original, whose home it may follow.
        let step_up = event(
            EventSource::Webhook,
            Some("s-2"),
            r#"{"session_id":"s-2","metadata":{"kycd_step_up_of":"s-1","other":1}}"#,
        );
        assert_eq!(route(&step_up, 64).follows(), Some("s-1"));
        assert_eq!(route(&with, 64).follows(), None);
        let id = "3f6c2a9e-0c1d-4b7a-9a55-2f1e8d7c6b5a";
        for body in [
            r#"{"session_id":"x"}"#,
            r#"{"vendor_data":""}"#,
            r#"{"vendor_data":null}"#,
            r#"{"vendor_data":7}"#,
            "not json",
        ] {
            let without = event(EventSource::Polled, Some(id), body);
            assert_eq!(route(&without, 64).resolve(None), Some(18), "{body}");
        }
        // A stored home wins: a later vendor_data does not move a session.
        assert_eq!(route(&with, 64).resolve(Some(3)), Some(3));
        // kycd's own event about a session follows its home, never its body.
        let review = event(
            EventSource::Internal,
            Some(id),
            r#"{"vendor_data":"user-1"}"#,
        );
        assert_eq!(route(&review, 64).resolve(None), Some(18));
        // A subject's write goes to its customer's partition.
        let subject = event(
            EventSource::Subject,
            None,
            r#"{"vendor_data":"user-1","attributes":{}}"#,
        );
        assert_eq!(route(&subject, 64), Route::Partition(k));
        // With one partition there is nothing to remember.
        assert_eq!(route(&with, 1), Route::Partition(0));
        assert_eq!(route(&subject, 1), Route::Partition(0));
        // Events about no session reach every partition.
        assert_eq!(
            route(&event(EventSource::Internal, None, "{}"), 64),
            Route::All
        );
        assert_eq!(
            route(&event(EventSource::Webhook, None, "{}"), 64),
            Route::All
        );
    }
}
