//! The closed vocabularies of the payload: statuses, event types and the
//! like (docs/didit-protocol.md 1.4, 2 and 3). Each keeps an unknown value as `Other`
//! rather than rejecting the delivery that carries it.

use std::fmt;

use super::json::string_enum;

string_enum! {
    /// The status of a verification session (docs/didit-protocol.md 2), spelt exactly
    /// as Didit sends it.
    ///
    /// # Lifecycle order
    ///
    /// Deliveries arrive twice and out of order (a late `In Progress` after
    /// `Approved`), so the session state machine must refuse to move a
    /// session backwards. [`SessionStatus::rank`] orders statuses by how far
    /// one attempt at the verification has got:
    ///
    /// | rank | statuses | meaning |
    /// |---|---|---|
    /// | 0 | `Not Started` | the session exists, the user has not begun |
    /// | 1 | `In Progress`, `Awaiting User` | the user (or, for KYB, the business) is working on it |
    /// | 2 | `Approved`, `Declined`, `In Review`, `Abandoned`, `Resubmitted`, `Expired`, `Kyc Expired` | the attempt has an outcome |
    ///
    /// Rules, checked by [`SessionStatus::is_backwards_from`]:
    ///
    /// - a move to a lower rank is backwards and must be refused;
    /// - the single exception is `Resubmitted`: it sends the user back to
    ///   redo some steps, so `In Progress` (or `Awaiting User`) after it
    ///   starts a new attempt and is forward;
    /// - moves between statuses of equal rank are not backwards: within rank
    ///   2 a reviewer or the API moves a session between outcomes (`In
    ///   Review` → `Approved`, `Declined` → `Approved`, `Approved` → `Kyc
    ///   Expired`, any outcome → `Resubmitted`), so the order between them
    ///   can only come from the delivery timestamps;
    /// - an `Other` status has no rank and cannot be ordered by status alone.
    ///
    /// Rank never replaces timestamps: a stale `In Progress` from before a
    /// resubmission passes the status check, and only its timestamp shows
    /// it is stale.
    pub enum SessionStatus {
        NotStarted => "Not Started",
        InProgress => "In Progress",
        Approved => "Approved",
        Declined => "Declined",
        InReview => "In Review",
        /// KYB only: Didit waits for the business to provide something.
        AwaitingUser => "Awaiting User",
        /// A reviewer or the API asked the user to redo some steps; the
        /// delivery carries `resubmit_info` instead of a decision.
        Resubmitted => "Resubmitted",
        /// The session was never completed in time.
        Expired => "Expired",
        Abandoned => "Abandoned",
        /// An approved verification whose document has since expired.
        KycExpired => "Kyc Expired",
    }
}

impl SessionStatus {
    /// How far one attempt has got: see the table on [`SessionStatus`].
    /// `None` for a status this version does not know.
    pub fn rank(&self) -> Option<u8> {
        match self {
            Self::NotStarted => Some(0),
            Self::InProgress | Self::AwaitingUser => Some(1),
            Self::Approved
            | Self::Declined
            | Self::InReview
            | Self::Abandoned
            | Self::Resubmitted
            | Self::Expired
            | Self::KycExpired => Some(2),
            Self::Other(_) => None,
        }
    }

    /// Whether moving a session from `current` to `self` goes backwards in
    /// the lifecycle, so that a delivery carrying `self` is stale. See the
    /// rules on [`SessionStatus`]. Unknown statuses are never backwards:
    /// they cannot be ordered, and the caller falls back to timestamps.
    pub fn is_backwards_from(&self, current: &SessionStatus) -> bool {
        match (current.rank(), self.rank()) {
            (Some(from), Some(to)) => {
                let restarts = *current == Self::Resubmitted && to >= 1;
                to < from && !restarts
            }
            _ => false,
        }
    }

    /// Whether a delivery with this status carries a `decision`
    /// (docs/didit-protocol.md 1.5): `Approved`, `Declined`, `In Review`, `Abandoned`.
    pub fn is_decided(&self) -> bool {
        matches!(
            self,
            Self::Approved | Self::Declined | Self::InReview | Self::Abandoned
        )
    }

    /// Whether the user's part is over with an outcome the operator can act
    /// on: `Approved`, `Declined`, `Abandoned`, `Expired`, `Kyc Expired`.
    /// `In Review` still waits for a reviewer and `Resubmitted` for the
    /// user. A final status can still change by a manual or API update.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Approved | Self::Declined | Self::Abandoned | Self::Expired | Self::KycExpired
        )
    }

    /// Whether the session is unfinished in the sense Didit uses when it
    /// hands back an existing session instead of creating one (docs/didit-protocol.md
    /// 4): `Not Started`, `In Progress`, `Resubmitted`, `Awaiting User`.
    pub fn is_unfinished(&self) -> bool {
        matches!(
            self,
            Self::NotStarted | Self::InProgress | Self::Resubmitted | Self::AwaitingUser
        )
    }
}

string_enum! {
    /// The status of one feature entry (an ID verification, a liveness
    /// check, ...), independent of the session's status.
    pub enum FeatureStatus {
        Approved => "Approved",
        Declined => "Declined",
        InReview => "In Review",
        /// The user never completed this step.
        NotFinished => "Not Finished",
        /// The document expired after an approval (ongoing monitoring).
        Expired => "Expired",
    }
}

string_enum! {
    /// The event type of a delivery (`webhook_type`, docs/didit-protocol.md 1.4).
    pub enum WebhookType {
        /// A session changed status.
        StatusUpdated => "status.updated",
        /// A reviewer corrected a session's data: the decision must be
        /// recomputed.
        DataUpdated => "data.updated",
        UserStatusUpdated => "user.status.updated",
        UserDataUpdated => "user.data.updated",
        BusinessStatusUpdated => "business.status.updated",
        BusinessDataUpdated => "business.data.updated",
        ActivityCreated => "activity.created",
        TransactionCreated => "transaction.created",
        TransactionStatusUpdated => "transaction.status.updated",
    }
}

impl WebhookType {
    /// A KYC or KYB session event, which carries `session_id` and `status`.
    pub fn is_session_event(&self) -> bool {
        matches!(self, Self::StatusUpdated | Self::DataUpdated)
    }

    /// An event about a user or business entity rather than a session; its
    /// content is in the envelope's `data`.
    pub fn is_entity_event(&self) -> bool {
        self.is_user_event() || self.is_business_event()
    }

    pub fn is_user_event(&self) -> bool {
        matches!(self, Self::UserStatusUpdated | Self::UserDataUpdated)
    }

    pub fn is_business_event(&self) -> bool {
        matches!(
            self,
            Self::BusinessStatusUpdated | Self::BusinessDataUpdated
        )
    }

    /// `activity.created`, `transaction.created` and
    /// `transaction.status.updated`.
    pub fn is_transaction_event(&self) -> bool {
        matches!(
            self,
            Self::ActivityCreated | Self::TransactionCreated | Self::TransactionStatusUpdated
        )
    }

    /// Whether the event says data changed rather than a status: the
    /// decision must be recomputed from the new data.
    pub fn is_data_update(&self) -> bool {
        matches!(
            self,
            Self::DataUpdated | Self::UserDataUpdated | Self::BusinessDataUpdated
        )
    }
}

string_enum! {
    /// Which Didit environment produced the delivery.
    pub enum Environment {
        Live => "live",
        /// Every provider check is mocked (docs/didit-protocol.md 5): never treat a
        /// sandbox approval as a real one.
        Sandbox => "sandbox",
    }
}

string_enum! {
    /// What a warning did to the session (docs/didit-protocol.md 3).
    pub enum LogType {
        /// The risk declined the session.
        Error => "error",
        /// The risk sent the session to review.
        Warning => "warning",
        /// The risk did neither.
        Information => "information",
    }
}

/// A liveness method. Didit sends these upper case but lower case has been
/// seen too, so [`LivenessMethod::parse`] ignores case; the entry keeps the
/// text as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LivenessMethod {
    Passive,
    Flashing,
    Active3d,
    Other(String),
}

impl LivenessMethod {
    pub fn parse(text: &str) -> Self {
        if text.eq_ignore_ascii_case("PASSIVE") {
            Self::Passive
        } else if text.eq_ignore_ascii_case("FLASHING") {
            Self::Flashing
        } else if text.eq_ignore_ascii_case("ACTIVE_3D") {
            Self::Active3d
        } else {
            Self::Other(text.to_owned())
        }
    }

    /// The canonical (upper case) name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Passive => "PASSIVE",
            Self::Flashing => "FLASHING",
            Self::Active3d => "ACTIVE_3D",
            Self::Other(text) => text,
        }
    }
}

/// Which shape the decision had on the wire (docs/didit-protocol.md 1.5). Every shape
/// is normalised into the v3 model; this records where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PayloadVersion {
    /// Early 2025: `kyc`, `aml`, `face`, `location` and top-level
    /// `warnings`.
    V1,
    /// Singular feature objects (`id_verification`, `liveness`, ...).
    V2,
    /// One array per feature (`id_verifications`, `liveness_checks`, ...).
    #[default]
    V3,
}

impl PayloadVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }
}

impl fmt::Display for PayloadVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verification feature, i.e. one of the decision's feature arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    IdVerification,
    Nfc,
    Liveness,
    FaceMatch,
    Poa,
    Phone,
    Email,
    Aml,
    IpAnalysis,
    DatabaseValidation,
    Questionnaire,
}

impl Feature {
    pub const ALL: [Feature; 11] = [
        Self::IdVerification,
        Self::Nfc,
        Self::Liveness,
        Self::FaceMatch,
        Self::Poa,
        Self::Phone,
        Self::Email,
        Self::Aml,
        Self::IpAnalysis,
        Self::DatabaseValidation,
        Self::Questionnaire,
    ];

    /// The name Didit uses in `features` and in a warning's `feature`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdVerification => "ID_VERIFICATION",
            Self::Nfc => "NFC",
            Self::Liveness => "LIVENESS",
            Self::FaceMatch => "FACE_MATCH",
            Self::Poa => "POA",
            Self::Phone => "PHONE",
            Self::Email => "EMAIL",
            Self::Aml => "AML",
            Self::IpAnalysis => "IP_ANALYSIS",
            Self::DatabaseValidation => "DATABASE_VALIDATION",
            Self::Questionnaire => "QUESTIONNAIRE",
        }
    }

    /// The key of the feature's array in a v3 decision.
    pub fn array_key(self) -> &'static str {
        match self {
            Self::IdVerification => "id_verifications",
            Self::Nfc => "nfc_verifications",
            Self::Liveness => "liveness_checks",
            Self::FaceMatch => "face_matches",
            Self::Poa => "poa_verifications",
            Self::Phone => "phone_verifications",
            Self::Email => "email_verifications",
            Self::Aml => "aml_screenings",
            Self::IpAnalysis => "ip_analyses",
            Self::DatabaseValidation => "database_validations",
            Self::Questionnaire => "questionnaire_responses",
        }
    }

    /// The feature a name in `features` or a warning's `feature` refers to,
    /// ignoring case and accepting the older names (`OCR` and `KYC` for the
    /// document, `FACE` for the face match, `LOCATION` for IP analysis).
    pub fn from_name(name: &str) -> Option<Feature> {
        let upper = name.trim().to_ascii_uppercase();
        let feature = match upper.as_str() {
            "ID_VERIFICATION" | "OCR" | "KYC" | "DOCUMENT" | "ID_DOCUMENT" => Self::IdVerification,
            "NFC" | "NFC_VERIFICATION" => Self::Nfc,
            "LIVENESS" => Self::Liveness,
            "FACE_MATCH" | "FACE" | "FACEMATCH" => Self::FaceMatch,
            "POA" | "PROOF_OF_ADDRESS" => Self::Poa,
            "PHONE" | "PHONE_VERIFICATION" => Self::Phone,
            "EMAIL" | "EMAIL_VERIFICATION" => Self::Email,
            "AML" => Self::Aml,
            "IP_ANALYSIS" | "LOCATION" | "IP" => Self::IpAnalysis,
            "DATABASE_VALIDATION" => Self::DatabaseValidation,
            "QUESTIONNAIRE" => Self::Questionnaire,
            _ => return None,
        };
        Some(feature)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_exact_strings() {
        for text in [
            "Not Started",
            "In Progress",
            "Approved",
            "Declined",
            "In Review",
            "Awaiting User",
            "Resubmitted",
            "Expired",
            "Abandoned",
            "Kyc Expired",
        ] {
            let status = SessionStatus::from(text);
            assert!(!matches!(status, SessionStatus::Other(_)), "{text}");
            assert_eq!(status.as_str(), text);
        }
        // One capital K: anything else is not the status Didit sends.
        assert_eq!(
            SessionStatus::from("KYC Expired"),
            SessionStatus::Other("KYC Expired".to_owned())
        );
    }

    #[test]
    fn a_late_in_progress_after_a_decision_is_backwards() {
        use SessionStatus::*;
        assert!(InProgress.is_backwards_from(&Approved));
        assert!(NotStarted.is_backwards_from(&InProgress));
        assert!(InProgress.is_backwards_from(&Expired));
        assert!(!Approved.is_backwards_from(&InProgress));
        assert!(!Expired.is_backwards_from(&NotStarted));
    }

    #[test]
    fn resubmission_starts_a_new_attempt() {
        use SessionStatus::*;
        assert!(!InProgress.is_backwards_from(&Resubmitted));
        assert!(!Approved.is_backwards_from(&Resubmitted));
        assert!(NotStarted.is_backwards_from(&Resubmitted));
    }

    #[test]
    fn outcomes_may_follow_each_other() {
        use SessionStatus::*;
        assert!(!Approved.is_backwards_from(&InReview));
        assert!(!Declined.is_backwards_from(&Approved));
        assert!(!KycExpired.is_backwards_from(&Approved));
        assert!(!Resubmitted.is_backwards_from(&Declined));
    }

    #[test]
    fn unknown_statuses_are_never_backwards() {
        let frozen = SessionStatus::from("Frozen");
        assert_eq!(frozen.rank(), None);
        assert!(!frozen.is_backwards_from(&SessionStatus::Approved));
        assert!(!SessionStatus::InProgress.is_backwards_from(&frozen));
    }

    #[test]
    fn decided_statuses_are_the_ones_with_a_decision() {
        let decided: Vec<_> = [
            "Not Started",
            "In Progress",
            "Approved",
            "Declined",
            "In Review",
            "Awaiting User",
            "Resubmitted",
            "Expired",
            "Abandoned",
            "Kyc Expired",
        ]
        .into_iter()
        .filter(|s| SessionStatus::from(*s).is_decided())
        .collect();
        assert_eq!(decided, ["Approved", "Declined", "In Review", "Abandoned"]);
    }

    #[test]
    fn webhook_types_are_classified() {
        assert!(WebhookType::from("data.updated").is_session_event());
        assert!(WebhookType::from("user.status.updated").is_entity_event());
        assert!(WebhookType::from("business.data.updated").is_data_update());
        assert!(WebhookType::from("transaction.created").is_transaction_event());
        let other = WebhookType::from("session.verified");
        assert!(!other.is_session_event() && !other.is_entity_event());
    }

    #[test]
    fn feature_names_include_the_legacy_ones() {
        assert_eq!(Feature::from_name("OCR"), Some(Feature::IdVerification));
        assert_eq!(Feature::from_name("face"), Some(Feature::FaceMatch));
        assert_eq!(Feature::from_name("LOCATION"), Some(Feature::IpAnalysis));
        assert_eq!(Feature::from_name("SOMETHING_NEW"), None);
        for feature in Feature::ALL {
            assert_eq!(Feature::from_name(feature.as_str()), Some(feature));
        }
    }

    #[test]
    fn liveness_methods_ignore_case() {
        assert_eq!(LivenessMethod::parse("passive"), LivenessMethod::Passive);
        assert_eq!(LivenessMethod::parse("ACTIVE_3D").as_str(), "ACTIVE_3D");
    }
}
