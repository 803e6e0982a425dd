//! The entries of a decision's feature arrays (docs/didit-protocol.md 3), their
//! warnings, and the smaller objects they hold.
//!
//! Each entry types the fields decisioning uses and keeps everything else
//! in `extra`. Personal data (names, document numbers, addresses) lives in
//! these structs: their `Debug` output must not reach logs.

use serde_json::Value;

use super::json::{model, FromToJson};
use super::kinds::{Feature, FeatureStatus, LivenessMethod, LogType, SessionStatus};

/// Risk codes worth knowing by name (docs/didit-protocol.md 3); Didit has many more,
/// and a warning carries any of them as text.
pub mod risk {
    pub const DOCUMENT_EXPIRED: &str = "DOCUMENT_EXPIRED";
    pub const ID_DOCUMENT_IN_BLOCKLIST: &str = "ID_DOCUMENT_IN_BLOCKLIST";
    pub const AGE_BELOW_MINIMUM: &str = "AGE_BELOW_MINIMUM";
    pub const SCREEN_CAPTURE_DETECTED: &str = "SCREEN_CAPTURE_DETECTED";
    pub const PRINTED_COPY_DETECTED: &str = "PRINTED_COPY_DETECTED";
    pub const PORTRAIT_MANIPULATION_DETECTED: &str = "PORTRAIT_MANIPULATION_DETECTED";
    pub const MRZ_VALIDATION_FAILED: &str = "MRZ_VALIDATION_FAILED";
    pub const POSSIBLE_DUPLICATED_USER: &str = "POSSIBLE_DUPLICATED_USER";
    pub const NO_FACE_DETECTED: &str = "NO_FACE_DETECTED";
    pub const LIVENESS_FACE_ATTACK: &str = "LIVENESS_FACE_ATTACK";
    pub const FACE_IN_BLOCKLIST: &str = "FACE_IN_BLOCKLIST";
    pub const LOW_LIVENESS_SCORE: &str = "LOW_LIVENESS_SCORE";
    pub const DUPLICATED_FACE: &str = "DUPLICATED_FACE";
    pub const LOW_FACE_MATCH_SIMILARITY: &str = "LOW_FACE_MATCH_SIMILARITY";
    pub const NO_REFERENCE_IMAGE: &str = "NO_REFERENCE_IMAGE";
    pub const POSSIBLE_MATCH_FOUND: &str = "POSSIBLE_MATCH_FOUND";
    pub const DISPOSABLE_NUMBER_DETECTED: &str = "DISPOSABLE_NUMBER_DETECTED";
    pub const VOIP_NUMBER_DETECTED: &str = "VOIP_NUMBER_DETECTED";
    pub const BREACHED_EMAIL_DETECTED: &str = "BREACHED_EMAIL_DETECTED";
    pub const DATABASE_VALIDATION_NO_MATCH: &str = "DATABASE_VALIDATION_NO_MATCH";
}

model! {
    /// One risk Didit found (docs/didit-protocol.md 3). Every field is optional: a
    /// warning with only a `risk` has been delivered.
    pub struct Warning {
        /// The feature name that raised it, e.g. `LIVENESS`; see
        /// [`Warning::feature_kind`].
        pub feature: Option<String> = "feature",
        /// The risk code, e.g. `LOW_FACE_MATCH_SIMILARITY` (see [`risk`]).
        pub risk: Option<String> = "risk",
        pub additional_data: Option<Value> = "additional_data",
        pub log_type: Option<LogType> = "log_type",
        pub short_description: Option<String> = "short_description",
        pub long_description: Option<String> = "long_description",
        pub node_id: Option<String> = "node_id",
    }
}

impl Warning {
    /// The risk code, if the warning has one.
    pub fn risk_code(&self) -> Option<&str> {
        self.risk.as_deref()
    }

    /// Whether this warning is the risk `code`.
    pub fn is_risk(&self, code: &str) -> bool {
        self.risk.as_deref() == Some(code)
    }

    /// The feature that raised it, from its `feature` name.
    pub fn feature_kind(&self) -> Option<Feature> {
        self.feature.as_deref().and_then(Feature::from_name)
    }

    /// `log_type: error`: the risk declined the session.
    pub fn declined(&self) -> bool {
        self.log_type == Some(LogType::Error)
    }

    /// `log_type: warning`: the risk sent the session to review.
    pub fn sent_to_review(&self) -> bool {
        self.log_type == Some(LogType::Warning)
    }

    /// `log_type: information`: the risk neither declined nor sent to
    /// review.
    pub fn is_information(&self) -> bool {
        self.log_type == Some(LogType::Information)
    }
}

/// What every feature entry has: its node, its own status and its warnings.
pub trait FeatureEntry {
    /// Which feature array the entry belongs to.
    fn feature(&self) -> Feature;
    /// The workflow node that produced it, e.g. `feature_liveness_1`.
    fn node_id(&self) -> Option<&str>;
    /// The entry's own status, independent of the session's.
    fn status(&self) -> Option<&FeatureStatus>;
    fn warnings(&self) -> &[Warning];
}

/// Defines a feature entry: a [`model!`] struct with `node_id`, `status` and
/// `warnings` first, and its [`FeatureEntry`] impl.
macro_rules! feature_entry {
    (
        $(#[$meta:meta])*
        pub struct $name:ident: $feature:ident {
            $($body:tt)*
        }
    ) => {
        model! {
            $(#[$meta])*
            pub struct $name {
                /// The workflow node that produced this entry.
                pub node_id: Option<String> = "node_id",
                /// This entry's own status.
                pub status: Option<FeatureStatus> = "status",
                pub warnings: Vec<Warning> = "warnings",
                $($body)*
            }
        }

        impl FeatureEntry for $name {
            fn feature(&self) -> Feature {
                Feature::$feature
            }

            fn node_id(&self) -> Option<&str> {
                self.node_id.as_deref()
            }

            fn status(&self) -> Option<&FeatureStatus> {
                self.status.as_ref()
            }

            fn warnings(&self) -> &[Warning] {
                &self.warnings
            }
        }
    };
}

feature_entry! {
    /// An entry of `id_verifications`: the document and what was read from
    /// it. Country codes are ISO alpha-3 here (`DEU`), unlike IP analysis.
    pub struct IdVerification: IdVerification {
        /// `Passport`, `Identity Card`, `Driver's License`, `Residence
        /// Permit`.
        pub document_type: Option<String> = "document_type",
        pub document_number: Option<String> = "document_number",
        pub personal_number: Option<String> = "personal_number",
        /// `YYYY-MM-DD`.
        pub date_of_birth: Option<String> = "date_of_birth",
        pub age: Option<i64> = "age",
        /// `YYYY-MM-DD`.
        pub expiration_date: Option<String> = "expiration_date",
        /// `YYYY-MM-DD`.
        pub date_of_issue: Option<String> = "date_of_issue",
        /// ISO 3166-1 alpha-3.
        pub issuing_state: Option<String> = "issuing_state",
        /// ISO 3166-1 alpha-3.
        pub nationality: Option<String> = "nationality",
        pub first_name: Option<String> = "first_name",
        pub last_name: Option<String> = "last_name",
        pub full_name: Option<String> = "full_name",
        pub gender: Option<String> = "gender",
        pub place_of_birth: Option<String> = "place_of_birth",
        /// Usually the MRZ text; kept as JSON because its shape is not
        /// documented to be stable (see [`IdVerification::mrz_text`]).
        pub mrz: Option<Value> = "mrz",
        /// A signed media URL that expires, typically within an hour: fetch
        /// it when needed, never store the link as if it lasted.
        pub portrait_image: Option<String> = "portrait_image",
        pub front_image: Option<String> = "front_image",
        pub back_image: Option<String> = "back_image",
    }
}

impl IdVerification {
    /// The MRZ as text: the string itself, or its lines joined by `\n`.
    pub fn mrz_text(&self) -> Option<String> {
        match self.mrz.as_ref()? {
            Value::String(text) => Some(text.clone()),
            Value::Array(lines) => lines
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()
                .map(|lines| lines.join("\n")),
            _ => None,
        }
    }
}

feature_entry! {
    /// An entry of `nfc_verifications`: the document chip read.
    pub struct NfcVerification: Nfc {}
}

model! {
    /// A possible duplicate face found by a liveness check.
    pub struct LivenessMatch {
        /// The other session the face was seen in.
        pub session_id: Option<String> = "session_id",
        pub session_number: Option<i64> = "session_number",
        pub vendor_data: Option<String> = "vendor_data",
        /// 0–100.
        pub similarity_percentage: Option<f64> = "similarity_percentage",
    }
}

feature_entry! {
    /// An entry of `liveness_checks`.
    pub struct LivenessCheck: Liveness {
        /// `PASSIVE`, `FLASHING`, `ACTIVE_3D`, as sent (lower case has been
        /// seen); see [`LivenessCheck::method_kind`].
        pub method: Option<String> = "method",
        /// 0–100.
        pub score: Option<f64> = "score",
        /// Estimated age in years.
        pub age_estimation: Option<f64> = "age_estimation",
        pub face_quality: Option<f64> = "face_quality",
        pub face_luminance: Option<f64> = "face_luminance",
        /// Possible duplicate faces from other sessions.
        pub matches: Vec<LivenessMatch> = "matches",
    }
}

impl LivenessCheck {
    pub fn method_kind(&self) -> Option<LivenessMethod> {
        self.method.as_deref().map(LivenessMethod::parse)
    }
}

feature_entry! {
    /// An entry of `face_matches`: the selfie against the document portrait,
    /// or, for biometric re-authentication, against the operator's
    /// reference image.
    pub struct FaceMatch: FaceMatch {
        /// 0–100. Didit's workflow defaults review below 70 and decline
        /// below 50.
        pub score: Option<f64> = "score",
        pub source_image: Option<String> = "source_image",
        pub target_image: Option<String> = "target_image",
    }
}

feature_entry! {
    /// An entry of `poa_verifications` (proof of address).
    pub struct PoaVerification: Poa {
        pub document_type: Option<String> = "document_type",
        pub issuer: Option<String> = "issuer",
        pub issue_date: Option<String> = "issue_date",
    }
}

model! {
    /// A phone number's carrier.
    pub struct Carrier {
        pub name: Option<String> = "name",
        /// `mobile`, `landline`, `voip`, ... (the JSON key is `type`).
        pub kind: Option<String> = "type",
    }
}

feature_entry! {
    /// An entry of `phone_verifications`.
    pub struct PhoneVerification: Phone {
        /// The number with its prefix, e.g. `+34600000000`.
        pub full_number: Option<String> = "full_number",
        pub phone_number: Option<String> = "phone_number",
        pub phone_number_prefix: Option<String> = "phone_number_prefix",
        pub country_code: Option<String> = "country_code",
        pub is_disposable: Option<bool> = "is_disposable",
        pub is_virtual: Option<bool> = "is_virtual",
        pub carrier: Option<Carrier> = "carrier",
    }
}

feature_entry! {
    /// An entry of `email_verifications`.
    pub struct EmailVerification: Email {
        pub email: Option<String> = "email",
        pub is_breached: Option<bool> = "is_breached",
        pub is_disposable: Option<bool> = "is_disposable",
        pub is_undeliverable: Option<bool> = "is_undeliverable",
    }
}

/// PEP, sanction or adverse-media matches of an AML hit. Didit has sent
/// these both as a count and as a list of match objects, so both are
/// accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum MatchSet {
    Count(u64),
    List(Vec<Value>),
}

impl MatchSet {
    /// How many matches there are, whichever form they came in.
    pub fn count(&self) -> u64 {
        match self {
            Self::Count(n) => *n,
            Self::List(items) => items.len() as u64,
        }
    }
}

impl FromToJson for MatchSet {
    fn from_json(value: Value) -> Result<Self, Value> {
        match value {
            Value::Array(items) => Ok(Self::List(items)),
            Value::Number(ref n) => n.as_u64().map(Self::Count).ok_or(value),
            Value::String(ref s) => s.trim().parse().map(Self::Count).map_err(|_| value),
            other => Err(other),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Count(n) => Value::from(*n),
            Self::List(items) => Value::Array(items.clone()),
        }
    }
}

model! {
    /// One possible match of an AML screening.
    ///
    /// Scores are 0–100. v1 deliveries gave a hit's match as `score` on a
    /// 0–1 scale (`0.7034`); the v1 normalisation writes it, times 100, to
    /// `match_score` and leaves the original `score` in `extra`.
    pub struct AmlHit {
        pub id: Option<String> = "id",
        /// The matched entity's name.
        pub caption: Option<String> = "caption",
        pub datasets: Vec<String> = "datasets",
        /// 0–100: how well the hit matches the screened person.
        pub match_score: Option<f64> = "match_score",
        /// 0–100: how risky the matched entity is.
        pub risk_score: Option<f64> = "risk_score",
        pub review_status: Option<String> = "review_status",
        pub pep_matches: Option<MatchSet> = "pep_matches",
        pub sanction_matches: Option<MatchSet> = "sanction_matches",
        pub adverse_media_matches: Option<MatchSet> = "adverse_media_matches",
    }
}

feature_entry! {
    /// An entry of `aml_screenings`.
    pub struct AmlScreening: Aml {
        pub total_hits: Option<i64> = "total_hits",
        /// 0–100.
        pub score: Option<f64> = "score",
        /// `person` or `company`.
        pub entity_type: Option<String> = "entity_type",
        /// What was screened (names, date of birth, ...).
        pub screened_data: Option<Value> = "screened_data",
        pub hits: Vec<AmlHit> = "hits",
    }
}

feature_entry! {
    /// An entry of `ip_analyses`. Country codes are ISO alpha-2 here (`DE`),
    /// unlike documents: normalise before comparing.
    pub struct IpAnalysis: IpAnalysis {
        pub ip_address: Option<String> = "ip_address",
        /// ISO 3166-1 alpha-2.
        pub ip_country_code: Option<String> = "ip_country_code",
        pub ip_country: Option<String> = "ip_country",
        pub ip_city: Option<String> = "ip_city",
        pub is_vpn_or_tor: Option<bool> = "is_vpn_or_tor",
        pub is_data_center: Option<bool> = "is_data_center",
        pub device_fingerprint: Option<String> = "device_fingerprint",
        pub platform: Option<String> = "platform",
        /// Distances between the IP location and the document's locations.
        pub locations_info: Option<Value> = "locations_info",
        pub latitude: Option<f64> = "latitude",
        pub longitude: Option<f64> = "longitude",
    }
}

feature_entry! {
    /// An entry of `database_validations`: the document data checked
    /// against a government or third-party database; `status` is the
    /// outcome.
    pub struct DatabaseValidation: DatabaseValidation {}
}

feature_entry! {
    /// An entry of `questionnaire_responses`.
    pub struct QuestionnaireResponse: Questionnaire {}
}

model! {
    /// A manual review recorded on the session.
    pub struct Review {
        /// Who reviewed (often an email address: personal data).
        pub user: Option<String> = "user",
        pub new_status: Option<SessionStatus> = "new_status",
        pub comment: Option<String> = "comment",
        pub created_at: Option<String> = "created_at",
    }
}

model! {
    /// A step the user must redo after a resubmission.
    pub struct NodeToResubmit {
        pub node_id: Option<String> = "node_id",
        /// The feature name, e.g. `OCR`.
        pub feature: Option<String> = "feature",
    }
}

model! {
    /// What a `Resubmitted` delivery carries instead of a decision.
    pub struct ResubmitInfo {
        pub nodes_to_resubmit: Vec<NodeToResubmit> = "nodes_to_resubmit",
        /// Why, per node id.
        pub reasons: std::collections::BTreeMap<String, String> = "reasons",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn an_entry_types_what_it_knows_and_keeps_the_rest() {
        let entry = LivenessCheck::from_map(object(json!({
            "node_id": "feature_liveness_1",
            "status": "Approved",
            "score": "97.25",
            "method": "passive",
            "warnings": [],
            "reference_image": "https://media.example/x.jpg",
            "face_quality": null,
        })));
        assert_eq!(entry.score, Some(97.25));
        assert_eq!(entry.method_kind(), Some(LivenessMethod::Passive));
        assert_eq!(entry.status, Some(FeatureStatus::Approved));
        assert!(entry.warnings.is_empty());
        assert_eq!(entry.face_quality, None);
        assert_eq!(
            Value::Object(entry.extra.clone()),
            json!({"reference_image": "https://media.example/x.jpg", "warnings": [], "face_quality": null})
        );
        assert_eq!(entry.feature(), Feature::Liveness);
    }

    #[test]
    fn aml_match_sets_may_be_counts_or_lists() {
        let hit = AmlHit::from_map(object(json!({
            "pep_matches": 2,
            "sanction_matches": [{"list": "x"}],
            "adverse_media_matches": [],
        })));
        assert_eq!(hit.pep_matches.as_ref().map(MatchSet::count), Some(2));
        assert_eq!(hit.sanction_matches.as_ref().map(MatchSet::count), Some(1));
        assert_eq!(
            hit.adverse_media_matches.as_ref().map(MatchSet::count),
            Some(0)
        );
    }

    #[test]
    fn carrier_type_is_read_from_its_json_key() {
        let phone = PhoneVerification::from_map(object(json!({
            "carrier": {"name": "X", "type": "voip"},
            "is_virtual": true,
        })));
        assert_eq!(
            phone.carrier.as_ref().and_then(|c| c.kind.as_deref()),
            Some("voip")
        );
        assert_eq!(
            Value::Object(phone.to_map()),
            json!({"carrier": {"name": "X", "type": "voip"}, "is_virtual": true})
        );
    }

    #[test]
    fn warning_helpers_read_the_log_type() {
        let warning = Warning::from_map(object(json!({
            "risk": "LOW_FACE_MATCH_SIMILARITY",
            "log_type": "error",
            "feature": "FACE_MATCH",
        })));
        assert!(warning.declined() && !warning.sent_to_review());
        assert!(warning.is_risk(risk::LOW_FACE_MATCH_SIMILARITY));
        assert_eq!(warning.feature_kind(), Some(Feature::FaceMatch));
    }

    #[test]
    fn mrz_text_accepts_a_string_or_lines() {
        let one = IdVerification::from_map(object(json!({"mrz": "P<D<<X"})));
        let lines = IdVerification::from_map(object(json!({"mrz": ["L1", "L2"]})));
        assert_eq!(one.mrz_text().as_deref(), Some("P<D<<X"));
        assert_eq!(lines.mrz_text().as_deref(), Some("L1\nL2"));
    }
}
