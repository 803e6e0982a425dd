//! The decision (docs/didit-protocol.md 3), and the normalisation of the v2 and v1
//! wire shapes into the v3 model.
//!
//! Detection looks at the keys only:
//!
//! - **v1** (early 2025) if the decision has `kyc`, `face` or `location`, or
//!   `features` is a string (`"OCR + FACE"`);
//! - **v2** if it has any singular feature object: `id_verification`, `nfc`,
//!   `liveness`, `face_match`, `poa`, `phone`, `email`, `aml`,
//!   `ip_analysis`, `database_validation` (the biometric-authentication
//!   product page shows `liveness` and `face_match` this way too);
//! - **v3** otherwise.
//!
//! v3 arrays are read whatever the version, and singular objects are
//! appended to them as one-element arrays. A singular or legacy key that is
//! `null` means "no data" and is dropped; one that is not an object is kept
//! in `extra` under its own key.
//!
//! v1 specifics:
//!
//! - `kyc` becomes an `id_verifications` entry, `location` an `ip_analyses`
//!   entry and `aml` an `aml_screenings` entry; their field names are the
//!   v3 ones already;
//! - `face` is split: `face_match_similarity`/`face_match_status` become a
//!   `face_matches` entry (`score`, `status`), and
//!   `liveness_confidence`/`liveness_status` a `liveness_checks` entry. The
//!   other keys of `face` (its overall `status`) stay in `extra["face"]`;
//! - an AML hit's `score` was 0–1 (`0.7034`) where v3's `match_score` is
//!   0–100, so a hit without `match_score` gets `match_score = score × 100`
//!   (only when `score` is within 0–1). The original `score` stays in the
//!   hit's `extra`;
//! - `features: "OCR + FACE"` becomes `["OCR", "FACE"]`; the names are kept
//!   as sent (see [`Feature::from_name`] for their meaning);
//! - the top-level `warnings` are moved to the entry of the feature they
//!   name (`AML` → the AML screening, `OCR`/`ID_VERIFICATION` → the
//!   document, `FACE` → the face match unless the risk is a liveness one,
//!   ...). A warning whose feature has no entry stays on the decision.
//!
//! Serialising a decision always gives the v3 shape.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::feature::{
    AmlScreening, DatabaseValidation, EmailVerification, FaceMatch, FeatureEntry, IdVerification,
    IpAnalysis, LivenessCheck, NfcVerification, PhoneVerification, PoaVerification,
    QuestionnaireResponse, Review, Warning,
};
use super::json::{put, take, FromToJson};
use super::kinds::{Environment, Feature, PayloadVersion, SessionStatus};
use super::PayloadError;

/// A session's decision, in the v3 shape whatever shape it arrived in.
///
/// Feature arrays are empty when Didit sent `null`, `[]` or nothing; the
/// exact form received stays in `extra` so that a v3 decision serialises
/// back to what was received.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// The wire shape the decision arrived in. Not serialised.
    pub version: PayloadVersion,
    pub session_id: Option<String>,
    pub session_number: Option<i64>,
    pub session_url: Option<String>,
    pub status: Option<SessionStatus>,
    pub environment: Option<Environment>,
    pub workflow_id: Option<String>,
    /// Feature names, e.g. `ID_VERIFICATION`; v1's `"OCR + FACE"` as a list.
    pub features: Vec<String>,
    pub vendor_data: Option<String>,
    pub metadata: Option<Value>,
    /// ISO-8601 with microseconds, as sent.
    pub created_at: Option<String>,
    pub reviews: Vec<Review>,
    pub id_verifications: Vec<IdVerification>,
    pub nfc_verifications: Vec<NfcVerification>,
    pub liveness_checks: Vec<LivenessCheck>,
    pub face_matches: Vec<FaceMatch>,
    pub poa_verifications: Vec<PoaVerification>,
    pub phone_verifications: Vec<PhoneVerification>,
    pub email_verifications: Vec<EmailVerification>,
    pub aml_screenings: Vec<AmlScreening>,
    pub ip_analyses: Vec<IpAnalysis>,
    pub database_validations: Vec<DatabaseValidation>,
    pub questionnaire_responses: Vec<QuestionnaireResponse>,
    /// Warnings on the decision itself rather than on an entry: v1
    /// warnings whose feature has no entry, and any top-level `warnings`
    /// of a later shape.
    pub warnings: Vec<Warning>,
    /// Every other key exactly as received (`expected_details`,
    /// `contact_details`, `callback`, keys Didit adds later, and known keys
    /// whose value had no typed meaning).
    pub extra: Map<String, Value>,
}

const V1_KEYS: [&str; 3] = ["kyc", "face", "location"];

const V2_KEYS: [(&str, Feature); 10] = [
    ("id_verification", Feature::IdVerification),
    ("nfc", Feature::Nfc),
    ("liveness", Feature::Liveness),
    ("face_match", Feature::FaceMatch),
    ("poa", Feature::Poa),
    ("phone", Feature::Phone),
    ("email", Feature::Email),
    ("aml", Feature::Aml),
    ("ip_analysis", Feature::IpAnalysis),
    ("database_validation", Feature::DatabaseValidation),
];

impl Decision {
    /// Reads a decision body, e.g. the response of
    /// `GET /v3/session/{id}/decision/`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PayloadError> {
        let value: Value = serde_json::from_slice(bytes).map_err(PayloadError::from_json)?;
        Self::from_value(value)
    }

    /// Reads a decision of any wire version. Fails only if `value` is not
    /// an object.
    pub fn from_value(value: Value) -> Result<Self, PayloadError> {
        match value {
            Value::Object(map) => Ok(Self::from_map(map)),
            _ => Err(PayloadError::NotAnObject { field: "decision" }),
        }
    }

    /// Reads a decision of any wire version from its JSON object. Never
    /// fails: see the `payload` module documentation for how unexpected
    /// values are kept.
    pub fn from_map(mut map: Map<String, Value>) -> Self {
        let version = detect(&map);
        // Legacy blocks come out first, so that what is left has the v3
        // shape; they are appended after the v3 arrays are read.
        let legacy = match version {
            PayloadVersion::V1 => take_v1(&mut map),
            PayloadVersion::V2 => take_v2(&mut map),
            PayloadVersion::V3 => Vec::new(),
        };
        if let Some(Value::String(list)) = map.get("features") {
            let names: Vec<Value> = list
                .split('+')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(|name| Value::String(name.to_owned()))
                .collect();
            map.insert("features".to_owned(), Value::Array(names));
        }

        let mut decision = Decision {
            version,
            session_id: take(&mut map, "session_id"),
            session_number: take(&mut map, "session_number"),
            session_url: take(&mut map, "session_url"),
            status: take(&mut map, "status"),
            environment: take(&mut map, "environment"),
            workflow_id: take(&mut map, "workflow_id"),
            features: take(&mut map, "features"),
            vendor_data: take(&mut map, "vendor_data"),
            metadata: take(&mut map, "metadata"),
            created_at: take(&mut map, "created_at"),
            reviews: take(&mut map, "reviews"),
            id_verifications: take(&mut map, Feature::IdVerification.array_key()),
            nfc_verifications: take(&mut map, Feature::Nfc.array_key()),
            liveness_checks: take(&mut map, Feature::Liveness.array_key()),
            face_matches: take(&mut map, Feature::FaceMatch.array_key()),
            poa_verifications: take(&mut map, Feature::Poa.array_key()),
            phone_verifications: take(&mut map, Feature::Phone.array_key()),
            email_verifications: take(&mut map, Feature::Email.array_key()),
            aml_screenings: take(&mut map, Feature::Aml.array_key()),
            ip_analyses: take(&mut map, Feature::IpAnalysis.array_key()),
            database_validations: take(&mut map, Feature::DatabaseValidation.array_key()),
            questionnaire_responses: take(&mut map, Feature::Questionnaire.array_key()),
            warnings: take(&mut map, "warnings"),
            extra: Map::new(),
        };
        decision.extra = map;
        for (feature, entry) in legacy {
            decision.push_entry(feature, entry);
        }
        if version == PayloadVersion::V1 {
            decision.distribute_v1_warnings();
        }
        decision
    }

    /// The v3 JSON object form: `extra`, overlaid with the typed fields.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = self.extra.clone();
        put(&mut map, "session_id", &self.session_id);
        put(&mut map, "session_number", &self.session_number);
        put(&mut map, "session_url", &self.session_url);
        put(&mut map, "status", &self.status);
        put(&mut map, "environment", &self.environment);
        put(&mut map, "workflow_id", &self.workflow_id);
        put(&mut map, "features", &self.features);
        put(&mut map, "vendor_data", &self.vendor_data);
        put(&mut map, "metadata", &self.metadata);
        put(&mut map, "created_at", &self.created_at);
        put(&mut map, "reviews", &self.reviews);
        put(
            &mut map,
            Feature::IdVerification.array_key(),
            &self.id_verifications,
        );
        put(&mut map, Feature::Nfc.array_key(), &self.nfc_verifications);
        put(
            &mut map,
            Feature::Liveness.array_key(),
            &self.liveness_checks,
        );
        put(&mut map, Feature::FaceMatch.array_key(), &self.face_matches);
        put(&mut map, Feature::Poa.array_key(), &self.poa_verifications);
        put(
            &mut map,
            Feature::Phone.array_key(),
            &self.phone_verifications,
        );
        put(
            &mut map,
            Feature::Email.array_key(),
            &self.email_verifications,
        );
        put(&mut map, Feature::Aml.array_key(), &self.aml_screenings);
        put(&mut map, Feature::IpAnalysis.array_key(), &self.ip_analyses);
        put(
            &mut map,
            Feature::DatabaseValidation.array_key(),
            &self.database_validations,
        );
        put(
            &mut map,
            Feature::Questionnaire.array_key(),
            &self.questionnaire_responses,
        );
        put(&mut map, "warnings", &self.warnings);
        map
    }

    /// Every feature entry, in the order of the feature arrays.
    pub fn entries(&self) -> impl Iterator<Item = &dyn FeatureEntry> + '_ {
        fn each<T: FeatureEntry>(entries: &[T]) -> impl Iterator<Item = &dyn FeatureEntry> + '_ {
            entries.iter().map(|entry| entry as &dyn FeatureEntry)
        }
        each(&self.id_verifications)
            .chain(each(&self.nfc_verifications))
            .chain(each(&self.liveness_checks))
            .chain(each(&self.face_matches))
            .chain(each(&self.poa_verifications))
            .chain(each(&self.phone_verifications))
            .chain(each(&self.email_verifications))
            .chain(each(&self.aml_screenings))
            .chain(each(&self.ip_analyses))
            .chain(each(&self.database_validations))
            .chain(each(&self.questionnaire_responses))
    }

    /// Every warning with the feature that raised it: an entry's warnings
    /// with the entry's feature, then the decision's own warnings with the
    /// feature they name (`None` if they name none this version knows).
    pub fn all_warnings(&self) -> impl Iterator<Item = (Option<Feature>, &Warning)> + '_ {
        self.entries()
            .flat_map(|entry| {
                let feature = entry.feature();
                entry
                    .warnings()
                    .iter()
                    .map(move |warning| (Some(feature), warning))
            })
            .chain(
                self.warnings
                    .iter()
                    .map(|warning| (warning.feature_kind(), warning)),
            )
    }

    /// The distinct risk codes of every warning, sorted.
    pub fn risk_codes(&self) -> BTreeSet<&str> {
        self.all_warnings()
            .filter_map(|(_, warning)| warning.risk_code())
            .collect()
    }

    /// Whether any warning is the risk `code`.
    pub fn has_risk(&self, code: &str) -> bool {
        self.all_warnings()
            .any(|(_, warning)| warning.is_risk(code))
    }

    fn push_entry(&mut self, feature: Feature, map: Map<String, Value>) {
        match feature {
            Feature::IdVerification => self.id_verifications.push(IdVerification::from_map(map)),
            Feature::Nfc => self.nfc_verifications.push(NfcVerification::from_map(map)),
            Feature::Liveness => self.liveness_checks.push(LivenessCheck::from_map(map)),
            Feature::FaceMatch => self.face_matches.push(FaceMatch::from_map(map)),
            Feature::Poa => self.poa_verifications.push(PoaVerification::from_map(map)),
            Feature::Phone => self
                .phone_verifications
                .push(PhoneVerification::from_map(map)),
            Feature::Email => self
                .email_verifications
                .push(EmailVerification::from_map(map)),
            Feature::Aml => self.aml_screenings.push(AmlScreening::from_map(map)),
            Feature::IpAnalysis => self.ip_analyses.push(IpAnalysis::from_map(map)),
            Feature::DatabaseValidation => self
                .database_validations
                .push(DatabaseValidation::from_map(map)),
            Feature::Questionnaire => self
                .questionnaire_responses
                .push(QuestionnaireResponse::from_map(map)),
        }
    }

    /// The warnings of the first entry of `feature`, if there is one.
    fn first_warnings_mut(&mut self, feature: Feature) -> Option<&mut Vec<Warning>> {
        match feature {
            Feature::IdVerification => self.id_verifications.first_mut().map(|e| &mut e.warnings),
            Feature::Nfc => self.nfc_verifications.first_mut().map(|e| &mut e.warnings),
            Feature::Liveness => self.liveness_checks.first_mut().map(|e| &mut e.warnings),
            Feature::FaceMatch => self.face_matches.first_mut().map(|e| &mut e.warnings),
            Feature::Poa => self.poa_verifications.first_mut().map(|e| &mut e.warnings),
            Feature::Phone => self
                .phone_verifications
                .first_mut()
                .map(|e| &mut e.warnings),
            Feature::Email => self
                .email_verifications
                .first_mut()
                .map(|e| &mut e.warnings),
            Feature::Aml => self.aml_screenings.first_mut().map(|e| &mut e.warnings),
            Feature::IpAnalysis => self.ip_analyses.first_mut().map(|e| &mut e.warnings),
            Feature::DatabaseValidation => self
                .database_validations
                .first_mut()
                .map(|e| &mut e.warnings),
            Feature::Questionnaire => self
                .questionnaire_responses
                .first_mut()
                .map(|e| &mut e.warnings),
        }
    }

    /// v1 put every warning on the decision; v3 puts each on the entry that
    /// raised it, which is where decisioning looks. A v1 decision has at
    /// most one entry per feature, so "the first entry" is the entry.
    fn distribute_v1_warnings(&mut self) {
        for warning in std::mem::take(&mut self.warnings) {
            let target = v1_target(&warning);
            match target.and_then(|feature| self.first_warnings_mut(feature)) {
                Some(warnings) => warnings.push(warning),
                None => self.warnings.push(warning),
            }
        }
    }
}

/// The feature a v1 warning belongs to. v1's `FACE` covered both the face
/// match and liveness, so a liveness risk under `FACE` goes to liveness.
fn v1_target(warning: &Warning) -> Option<Feature> {
    let feature = warning.feature_kind()?;
    let liveness_risk = warning
        .risk
        .as_deref()
        .is_some_and(|risk| risk.contains("LIVENESS"));
    if feature == Feature::FaceMatch && liveness_risk {
        Some(Feature::Liveness)
    } else {
        Some(feature)
    }
}

fn detect(map: &Map<String, Value>) -> PayloadVersion {
    if V1_KEYS.iter().any(|key| map.contains_key(*key))
        || matches!(map.get("features"), Some(Value::String(_)))
    {
        PayloadVersion::V1
    } else if V2_KEYS.iter().any(|(key, _)| map.contains_key(*key)) {
        PayloadVersion::V2
    } else {
        PayloadVersion::V3
    }
}

/// Takes `key` out of `map` as an object. Null is dropped (it means "no
/// data"); anything else that is not an object is put back.
fn take_object(map: &mut Map<String, Value>, key: &str) -> Option<Map<String, Value>> {
    match map.remove(key)? {
        Value::Object(object) => Some(object),
        Value::Null => None,
        other => {
            map.insert(key.to_owned(), other);
            None
        }
    }
}

fn take_v2(map: &mut Map<String, Value>) -> Vec<(Feature, Map<String, Value>)> {
    V2_KEYS
        .iter()
        .filter_map(|(key, feature)| take_object(map, key).map(|object| (*feature, object)))
        .collect()
}

fn take_v1(map: &mut Map<String, Value>) -> Vec<(Feature, Map<String, Value>)> {
    let mut out = Vec::new();
    if let Some(kyc) = take_object(map, "kyc") {
        out.push((Feature::IdVerification, kyc));
    }
    if let Some(mut face) = take_object(map, "face") {
        let face_match = move_keys(
            &mut face,
            &[
                ("face_match_similarity", "score"),
                ("face_match_status", "status"),
            ],
        );
        let liveness = move_keys(
            &mut face,
            &[
                ("liveness_confidence", "score"),
                ("liveness_status", "status"),
            ],
        );
        if !liveness.is_empty() {
            out.push((Feature::Liveness, liveness));
        }
        if !face_match.is_empty() {
            out.push((Feature::FaceMatch, face_match));
        }
        if !face.is_empty() {
            map.insert("face".to_owned(), Value::Object(face));
        }
    }
    if let Some(mut aml) = take_object(map, "aml") {
        if let Some(Value::Array(hits)) = aml.get_mut("hits") {
            hits.iter_mut().for_each(scale_v1_hit_score);
        }
        out.push((Feature::Aml, aml));
    }
    if let Some(location) = take_object(map, "location") {
        out.push((Feature::IpAnalysis, location));
    }
    out
}

/// Moves the keys `(from, to)` out of `source` into a new object.
fn move_keys(source: &mut Map<String, Value>, keys: &[(&str, &str)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (from, to) in keys {
        if let Some(value) = source.remove(*from) {
            out.insert((*to).to_owned(), value);
        }
    }
    out
}

/// v1 hit `score` 0–1 → v3 `match_score` 0–100 (see the module docs).
fn scale_v1_hit_score(hit: &mut Value) {
    let Value::Object(hit) = hit else { return };
    if hit.contains_key("match_score") {
        return;
    }
    let score = hit
        .get("score")
        .cloned()
        .and_then(|v| f64::from_json(v).ok());
    if let Some(score) = score.filter(|s| (0.0..=1.0).contains(s)) {
        hit.insert("match_score".to_owned(), (score * 100.0).to_json());
    }
}

impl FromToJson for Decision {
    fn from_json(value: Value) -> Result<Self, Value> {
        match value {
            Value::Object(map) => Ok(Self::from_map(map)),
            other => Err(other),
        }
    }

    fn to_json(&self) -> Value {
        Value::Object(self.to_map())
    }
}

impl serde::Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.to_map(), serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Decision {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = <Value as serde::Deserialize>::deserialize(deserializer)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::payload::kinds::FeatureStatus;

    fn decision(value: Value) -> Decision {
        match Decision::from_value(value) {
            Ok(decision) => decision,
            Err(err) => panic!("decision did not parse: {err}"),
        }
    }

    #[test]
    fn a_decision_with_arrays_is_v3() {
        let d = decision(json!({"status": "Approved", "face_matches": [{"score": 91.3}]}));
        assert_eq!(d.version, PayloadVersion::V3);
        assert_eq!(d.face_matches[0].score, Some(91.3));
    }

    #[test]
    fn singular_objects_become_one_element_arrays() {
        let d = decision(json!({
            "liveness": {"score": 100, "status": "Approved"},
            "face_match": {"score": 80.5, "status": "Approved"},
            "nfc": null,
            "phone": "unexpected",
        }));
        assert_eq!(d.version, PayloadVersion::V2);
        assert_eq!(d.liveness_checks.len(), 1);
        assert_eq!(d.face_matches[0].score, Some(80.5));
        assert!(d.nfc_verifications.is_empty());
        assert!(!d.extra.contains_key("nfc"));
        assert_eq!(d.extra.get("phone"), Some(&json!("unexpected")));
    }

    #[test]
    fn v1_face_is_split_into_face_match_and_liveness() {
        let d = decision(json!({
            "face": {
                "face_match_similarity": 97.99,
                "face_match_status": "Approved",
                "liveness_confidence": 87.99,
                "liveness_status": "Declined",
                "status": "Declined",
            },
            "warnings": [
                {"feature": "FACE", "risk": "LOW_LIVENESS_SCORE"},
                {"feature": "FACE", "risk": "LOW_FACE_MATCH_SIMILARITY"},
                {"feature": "NFC", "risk": "SOMETHING"},
            ],
        }));
        assert_eq!(d.version, PayloadVersion::V1);
        assert_eq!(d.face_matches[0].score, Some(97.99));
        assert_eq!(d.liveness_checks[0].score, Some(87.99));
        assert_eq!(d.liveness_checks[0].status, Some(FeatureStatus::Declined));
        assert_eq!(d.extra.get("face"), Some(&json!({"status": "Declined"})));
        assert!(d.liveness_checks[0].warnings[0].is_risk("LOW_LIVENESS_SCORE"));
        assert!(d.face_matches[0].warnings[0].is_risk("LOW_FACE_MATCH_SIMILARITY"));
        // No NFC entry to attach it to: it stays on the decision.
        assert_eq!(d.warnings.len(), 1);
        assert_eq!(d.risk_codes().len(), 3);
    }

    #[test]
    fn v1_hit_scores_are_scaled_to_percent() {
        let d = decision(json!({
            "kyc": {},
            "aml": {"hits": [{"score": 0.5}, {"score": 0.25, "match_score": 40}, {"score": 70}]},
        }));
        let hits = &d.aml_screenings[0].hits;
        assert_eq!(hits[0].match_score, Some(50.0));
        assert_eq!(hits[0].extra.get("score"), Some(&json!(0.5)));
        assert_eq!(hits[1].match_score, Some(40.0));
        // Out of 0–1: not a v1 fraction, so it is not guessed at.
        assert_eq!(hits[2].match_score, None);
    }

    #[test]
    fn v2_hit_scores_are_left_alone() {
        let d = decision(json!({"aml": {"hits": [{"score": 0.5}]}}));
        assert_eq!(d.version, PayloadVersion::V2);
        assert_eq!(d.aml_screenings[0].hits[0].match_score, None);
    }

    #[test]
    fn a_normalised_v1_decision_reads_back_the_same() {
        let d = decision(json!({
            "kyc": {"document_number": "BK1"},
            "face": {"face_match_similarity": 90, "status": "Approved"},
            "aml": {"hits": [{"score": 0.7}]},
            "features": "OCR + FACE",
            "warnings": [{"feature": "AML", "risk": "POSSIBLE_MATCH_FOUND"}],
        }));
        let again = decision(Value::Object(d.to_map()));
        assert_eq!(again.id_verifications, d.id_verifications);
        assert_eq!(again.face_matches, d.face_matches);
        assert_eq!(again.aml_screenings, d.aml_screenings);
        assert_eq!(again.features, ["OCR", "FACE"]);
        assert_eq!(again.warnings, d.warnings);
    }

    #[test]
    fn a_decision_that_is_not_an_object_is_an_error() {
        let err = Decision::from_value(json!("Approved: secret name"));
        assert!(matches!(err, Err(PayloadError::NotAnObject { .. })));
    }
}
