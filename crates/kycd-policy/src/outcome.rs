//! The closed vocabularies a policy speaks: outcomes, step-up checks and
//! the Didit features a resubmission can name.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a policy decides. Ordered by [`Outcome::severity`]: when several
/// rules force outcomes, the most severe one wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approve,
    Review,
    Decline,
    Resubmit,
    StepUp,
    Block,
}

impl Outcome {
    /// Every outcome, least severe first.
    pub const ALL: [Outcome; 6] = [
        Outcome::Approve,
        Outcome::StepUp,
        Outcome::Resubmit,
        Outcome::Review,
        Outcome::Decline,
        Outcome::Block,
    ];

    /// Precedence when outcomes meet: block > decline > review > resubmit >
    /// step_up > approve. A step-up or a resubmission still lets the same
    /// person through after one more check, so they rank below a human
    /// review; a decline ends the session, a block also ends the subject.
    pub fn severity(self) -> u8 {
        match self {
            Outcome::Approve => 0,
            Outcome::StepUp => 1,
            Outcome::Resubmit => 2,
            Outcome::Review => 3,
            Outcome::Decline => 4,
            Outcome::Block => 5,
        }
    }

    /// The more severe of two outcomes.
    pub fn max(self, other: Outcome) -> Outcome {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approve => "approve",
            Outcome::Review => "review",
            Outcome::Decline => "decline",
            Outcome::Resubmit => "resubmit",
            Outcome::StepUp => "step_up",
            Outcome::Block => "block",
        }
    }

    /// Parses the policy-file spelling (`"step_up"`, not `"StepUp"`).
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An extra check a `step_up` outcome asks the customer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Check {
    /// Read the document's chip.
    #[serde(rename = "NFC")]
    Nfc,
    /// Verify a phone number by one-time code.
    #[serde(rename = "PHONE")]
    Phone,
    /// A biometric re-authentication (fresh liveness plus face match).
    #[serde(rename = "BIOMETRIC_AUTH")]
    BiometricAuth,
}

impl Check {
    pub const ALL: [Check; 3] = [Check::Nfc, Check::Phone, Check::BiometricAuth];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Nfc => "NFC",
            Check::Phone => "PHONE",
            Check::BiometricAuth => "BIOMETRIC_AUTH",
        }
    }

    pub fn parse(s: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Didit's feature names (docs/didit-protocol.md section 3), the only values a
/// resubmission may name: a typo here would otherwise surface as a 400 from
/// Didit long after the policy was deployed.
pub const DIDIT_FEATURES: [&str; 10] = [
    "ID_VERIFICATION",
    "NFC",
    "LIVENESS",
    "FACE_MATCH",
    "POA",
    "PHONE",
    "EMAIL",
    "DATABASE_VALIDATION",
    "AML",
    "IP_ANALYSIS",
];

/// One Didit step to redo. Facts carry no node ids (they are workflow
/// specific), so a policy names the feature and may pin a `node_id`; when it
/// does not, the engine resolves the node from the session's decision.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResubmitNode {
    pub feature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_orders_block_above_everything_and_approve_below() {
        let mut sorted = Outcome::ALL;
        sorted.sort_by_key(|o| o.severity());
        assert_eq!(sorted, Outcome::ALL);
        assert_eq!(Outcome::StepUp.max(Outcome::Decline), Outcome::Decline);
        assert_eq!(Outcome::Block.max(Outcome::Review), Outcome::Block);
    }

    #[test]
    fn outcomes_and_checks_round_trip_their_spelling() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            assert_eq!(serde_json::to_value(o).ok(), Some(o.as_str().into()));
        }
        for c in Check::ALL {
            assert_eq!(Check::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).ok(), Some(c.as_str().into()));
        }
        assert_eq!(Outcome::parse("StepUp"), None);
    }
}
