//! Building Didit's v3 decision (docs/didit-protocol.md section 3) for a session: one
//! entry per feature the workflow runs, each with its `node_id`, `status`
//! and `warnings`, scores in Didit's ranges, and the overall status derived
//! the way Didit derives it (any `error` warning declines, any `warning`
//! sends to review).

use rand::Rng;
use serde_json::{json, Map, Value};
use time::Date;

use crate::ids::{round2, score, SimRng};
use crate::people::{self, Persona, HOSTING};
use crate::scenario::{
    AmlTrait, DocTrait, EmailTrait, IpTrait, LivenessTrait, NfcTrait, PhoneTrait, Traits,
};

/// A verification step. The order of [`Feat::ALL`] is the order a user goes
/// through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Feat {
    Ip,
    Id,
    /// The document's chip, read after the document photo.
    Nfc,
    Liveness,
    FaceMatch,
    Aml,
    Phone,
    Email,
    Poa,
    Questionnaire,
}

impl Feat {
    pub(crate) const ALL: [Feat; 10] = [
        Feat::Ip,
        Feat::Id,
        Feat::Nfc,
        Feat::Liveness,
        Feat::FaceMatch,
        Feat::Aml,
        Feat::Phone,
        Feat::Email,
        Feat::Poa,
        Feat::Questionnaire,
    ];

    /// The name in the decision's `features` list.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Feat::Ip => "IP_ANALYSIS",
            Feat::Id => "ID_VERIFICATION",
            Feat::Nfc => "NFC",
            Feat::Liveness => "LIVENESS",
            Feat::FaceMatch => "FACE_MATCH",
            Feat::Aml => "AML",
            Feat::Phone => "PHONE",
            Feat::Email => "EMAIL",
            Feat::Poa => "POA",
            Feat::Questionnaire => "QUESTIONNAIRE",
        }
    }

    /// The v3 array key.
    pub(crate) fn array_key(self) -> &'static str {
        match self {
            Feat::Ip => "ip_analyses",
            Feat::Id => "id_verifications",
            Feat::Nfc => "nfc_verifications",
            Feat::Liveness => "liveness_checks",
            Feat::FaceMatch => "face_matches",
            Feat::Aml => "aml_screenings",
            Feat::Phone => "phone_verifications",
            Feat::Email => "email_verifications",
            Feat::Poa => "poa_verifications",
            Feat::Questionnaire => "questionnaire_responses",
        }
    }

    /// The v2 singular key, where v2 had one.
    pub(crate) fn v2_key(self) -> Option<&'static str> {
        Some(match self {
            Feat::Ip => "ip_analysis",
            Feat::Id => "id_verification",
            Feat::Nfc => "nfc",
            Feat::Liveness => "liveness",
            Feat::FaceMatch => "face_match",
            Feat::Aml => "aml",
            Feat::Phone => "phone",
            Feat::Email => "email",
            Feat::Poa => "poa",
            Feat::Questionnaire => return None,
        })
    }

    pub(crate) fn node_id(self) -> &'static str {
        match self {
            Feat::Ip => "feature_ip_analysis_1",
            Feat::Id => "feature_ocr_1",
            Feat::Nfc => "feature_nfc_1",
            Feat::Liveness => "feature_liveness_1",
            Feat::FaceMatch => "feature_face_match_1",
            Feat::Aml => "feature_aml_1",
            Feat::Phone => "feature_phone_1",
            Feat::Email => "feature_email_1",
            Feat::Poa => "feature_poa_1",
            Feat::Questionnaire => "feature_questionnaire_1",
        }
    }

    /// The `feature` of a node in `nodes_to_resubmit` (`OCR` for documents).
    pub(crate) fn node_feature(self) -> &'static str {
        match self {
            Feat::Id => "OCR",
            other => other.name(),
        }
    }

    /// The `feature` tag on warnings (`LOCATION` for IP analysis).
    fn warning_tag(self) -> &'static str {
        match self {
            Feat::Ip => "LOCATION",
            other => other.name(),
        }
    }

    pub(crate) fn from_node_id(node_id: &str) -> Option<Feat> {
        Feat::ALL.into_iter().find(|f| f.node_id() == node_id)
    }
}

/// Another session that presented the same face or document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sighting {
    pub session_id: String,
    pub session_number: u64,
    pub vendor_data: Option<String>,
}

/// What the session's presenter has on the operator's blocklist.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Blocked {
    pub face: bool,
    pub document: bool,
    pub phone: bool,
    pub email: bool,
}

/// Everything one feature entry is built from.
pub(crate) struct Ctx<'a> {
    pub today: Date,
    /// Wall-clock time of the check, for `verified_at`.
    pub now_iso: &'a str,
    pub base_url: &'a str,
    pub session_id: &'a str,
    pub persona: &'a Persona,
    pub traits: &'a Traits,
    pub face_review_below: f64,
    pub face_decline_below: f64,
    /// For biometric re-authentication: the face on the operator's
    /// reference portrait, `Some(None)` when the image was not one the
    /// simulator made; `None` for KYC (the document portrait is the reference).
    pub reference_face: Option<Option<u64>>,
    pub blocked: Blocked,
    pub same_face: &'a [Sighting],
    pub same_document: &'a [Sighting],
}

impl Ctx<'_> {
    fn media(&self, name: &str, rng: &mut SimRng) -> String {
        format!(
            "{}/sim/v1/media/{}/{name}?X-Amz-Expires=3600&X-Amz-Signature={}",
            self.base_url,
            self.session_id,
            hex::encode(rng.gen::<[u8; 16]>())
        )
    }
}

fn describe(risk: &str) -> (&'static str, &'static str) {
    match risk {
        "DOCUMENT_EXPIRED" => (
            "Document expired",
            "The document's expiration date has passed at capture time.",
        ),
        "AGE_BELOW_MINIMUM" => (
            "Age below minimum",
            "The age extracted from the document is below the minimum age the workflow allows.",
        ),
        "PRINTED_COPY_DETECTED" => (
            "Printed copy detected",
            "The document presented appears to be a printed copy rather than an original.",
        ),
        "SCREEN_CAPTURE_DETECTED" => (
            "Screen capture detected",
            "The document was captured from a screen rather than presented physically.",
        ),
        "DOCUMENT_NUMBER_NOT_DETECTED" => (
            "Document number not detected",
            "The document number could not be read from the images provided.",
        ),
        "ID_DOCUMENT_IN_BLOCKLIST" => (
            "Document in blocklist",
            "The document matches an entry on the application's blocklist.",
        ),
        "POSSIBLE_DUPLICATED_USER" => (
            "Possible duplicated approved user from other session",
            "The same document was presented in another session with a different vendor data.",
        ),
        "SKIPPED_NFC_VALIDATION" => (
            "NFC validation skipped",
            "The document's NFC chip could not be read, so its validation was not completed.",
        ),
        "NFC_AND_OCR_DATA_NOT_SAME" => (
            "NFC and OCR data do not match",
            "The data stored in the document's chip does not match the data read from its printed page.",
        ),
        "LIVENESS_FACE_ATTACK" => (
            "Presentation attack",
            "The liveness check detected a presentation attack (mask, screen or replayed video).",
        ),
        "LOW_LIVENESS_SCORE" => (
            "Low liveness score",
            "The liveness score is below the workflow's review threshold.",
        ),
        "FACE_IN_BLOCKLIST" => (
            "Face in blocklist",
            "The face matches a face on the application's blocklist.",
        ),
        "DUPLICATED_FACE" => (
            "Duplicated face",
            "The face was already seen in another session with a different vendor data.",
        ),
        "LOW_FACE_MATCH_SIMILARITY" => (
            "Low face match similarity",
            "The selfie and the reference portrait are not similar enough.",
        ),
        "NO_REFERENCE_IMAGE" => (
            "No reference image",
            "No reference portrait was available to compare the selfie against.",
        ),
        "POSSIBLE_MATCH_FOUND" => (
            "Possible match found in AML screening",
            "The screened person possibly matches an entry on a watchlist.",
        ),
        "PRIVATE_NETWORK_DETECTED" => (
            "Private network (VPN/Tor) detected",
            "The system detected that the user tried to use a private network (VPN/TOR) to complete the verification process.",
        ),
        "COUNTRY_FROM_DOCUMENT_DOES_NOT_MATCH_COUNTRY_FROM_IP" => (
            "Document country does not match IP country",
            "The country from the document does not match the country from the IP address.",
        ),
        "DUPLICATED_DEVICE_FINGERPRINT" => (
            "Duplicated device fingerprint",
            "The same device was used in sessions with different vendor data.",
        ),
        "DISPOSABLE_NUMBER_DETECTED" => (
            "Disposable number detected",
            "The phone number has been identified as a temporary or disposable number.",
        ),
        "VOIP_NUMBER_DETECTED" => (
            "VoIP number detected",
            "The phone number resolves to a VoIP line.",
        ),
        "PHONE_NUMBER_IN_BLOCKLIST" => (
            "Phone number in blocklist",
            "The phone number is in the application's blocklist.",
        ),
        "DISPOSABLE_EMAIL_DETECTED" => (
            "Disposable email detected",
            "The email address belongs to a disposable email provider.",
        ),
        "BREACHED_EMAIL_DETECTED" => (
            "Breached email detected",
            "The email address was found in known data breaches.",
        ),
        "EMAIL_IN_BLOCKLIST" => (
            "Email in blocklist",
            "The email address is in the application's blocklist.",
        ),
        _ => ("Risk detected", "A risk was detected."),
    }
}

fn warning(feat: Feat, risk: &str, log_type: &str, additional_data: Value) -> Value {
    let (short, long) = describe(risk);
    json!({
        "feature": feat.warning_tag(),
        "risk": risk,
        "additional_data": additional_data,
        "log_type": log_type,
        "short_description": short,
        "long_description": long,
        "node_id": feat.node_id(),
    })
}

/// A feature's status from its warnings: any `error` declines, any
/// `warning` sends to review.
pub(crate) fn status_from_warnings(warnings: &[Value]) -> &'static str {
    let has = |kind: &str| warnings.iter().any(|w| w["log_type"] == kind);
    if has("error") {
        "Declined"
    } else if has("warning") {
        "In Review"
    } else {
        "Approved"
    }
}

/// The session's status from its feature statuses, as Didit derives it.
pub(crate) fn overall_status<'a>(statuses: impl IntoIterator<Item = &'a str>) -> &'static str {
    let mut review = false;
    for s in statuses {
        match s {
            "Declined" => return "Declined",
            "In Review" | "Not Finished" => review = true,
            _ => {}
        }
    }
    if review {
        "In Review"
    } else {
        "Approved"
    }
}

fn entry(feat: Feat, mut fields: Map<String, Value>, warnings: Vec<Value>) -> Value {
    let status = status_from_warnings(&warnings);
    fields.insert("node_id".into(), json!(feat.node_id()));
    fields.insert("status".into(), json!(status));
    fields.insert("warnings".into(), Value::Array(warnings));
    Value::Object(fields)
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn iso_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

/// Builds the entry of `feat` for the session described by `ctx`.
pub(crate) fn build(feat: Feat, ctx: &Ctx<'_>, rng: &mut SimRng) -> Value {
    match feat {
        Feat::Id => id_verification(ctx, rng),
        Feat::Nfc => nfc(ctx, rng),
        Feat::Liveness => liveness(ctx, rng),
        Feat::FaceMatch => face_match(ctx, rng),
        Feat::Aml => aml(ctx, rng),
        Feat::Ip => ip_analysis(ctx, rng),
        Feat::Phone => phone(ctx, rng),
        Feat::Email => email(ctx, rng),
        Feat::Poa => poa(ctx, rng),
        Feat::Questionnaire => entry(
            Feat::Questionnaire,
            obj(json!({
                "questionnaire_id": "sim-source-of-funds",
                "answers": [
                    {"question": "What is the source of your funds?", "answer": "Salary"},
                    {"question": "Expected monthly volume", "answer": "Under 1,000 EUR"},
                ],
            })),
            Vec::new(),
        ),
    }
}

fn id_verification(ctx: &Ctx<'_>, rng: &mut SimRng) -> Value {
    let p = ctx.persona;
    let c = p.country();
    let age = p.age_on(ctx.today);
    let mut warnings = Vec::new();
    let readable = ctx.traits.document != DocTrait::Blurry;
    match ctx.traits.document {
        DocTrait::Printed => warnings.push(warning(
            Feat::Id,
            "PRINTED_COPY_DETECTED",
            "error",
            json!({"confidence": score(rng, 0.86, 0.99)}),
        )),
        DocTrait::Screen => warnings.push(warning(
            Feat::Id,
            "SCREEN_CAPTURE_DETECTED",
            "error",
            json!({"confidence": score(rng, 0.84, 0.99)}),
        )),
        DocTrait::Blurry => warnings.push(warning(
            Feat::Id,
            "DOCUMENT_NUMBER_NOT_DETECTED",
            "warning",
            Value::Null,
        )),
        DocTrait::Clean => {}
    }
    if p.expiration_date < ctx.today {
        warnings.push(warning(
            Feat::Id,
            "DOCUMENT_EXPIRED",
            "error",
            json!({"expiration_date": iso_date(p.expiration_date)}),
        ));
    }
    if age < 18 {
        warnings.push(warning(
            Feat::Id,
            "AGE_BELOW_MINIMUM",
            "error",
            json!({"age": age, "minimum_age": 18}),
        ));
    }
    if ctx.blocked.document {
        warnings.push(warning(
            Feat::Id,
            "ID_DOCUMENT_IN_BLOCKLIST",
            "error",
            Value::Null,
        ));
    }
    if readable {
        if let Some(first) = ctx.same_document.first() {
            warnings.push(warning(
                Feat::Id,
                "POSSIBLE_DUPLICATED_USER",
                "information",
                json!({
                    "duplicated_session_id": first.session_id,
                    "duplicated_session_number": first.session_number,
                }),
            ));
        }
    }
    let fields = json!({
        "document_type": p.document_type,
        "document_number": readable.then(|| p.document_number.clone()),
        "personal_number": p.personal_number,
        "date_of_birth": iso_date(p.date_of_birth),
        "age": age,
        "expiration_date": iso_date(p.expiration_date),
        "date_of_issue": iso_date(p.date_of_issue),
        "issuing_state": c.a3,
        "issuing_state_name": c.name,
        "nationality": c.a3,
        "first_name": p.first_name,
        "last_name": p.last_name,
        "full_name": p.full_name(),
        "gender": p.gender,
        "place_of_birth": p.city().name,
        "address": format!("{}, {}", p.address(rng.gen_range(1..200)), c.name),
        "mrz": if readable { people::mrz(p) } else { None },
        "portrait_image": ctx.media("portrait.jpg", rng),
        "front_image": ctx.media("front.jpg", rng),
        "back_image": ctx.media("back.jpg", rng),
    });
    entry(Feat::Id, obj(fields), warnings)
}

/// The chip read (Didit's NFC report): the chip's own copy of the
/// document data (`chip_data`), the SOD signature and data-group hash checks
/// (`authenticity`) and the document signer certificate. A genuine
/// document's chip repeats the page; a printout has no chip to read; a
/// forged document's chip names someone else.
fn nfc(ctx: &Ctx<'_>, rng: &mut SimRng) -> Value {
    let p = ctx.persona;
    let c = p.country();
    if ctx.traits.nfc == NfcTrait::NoChip {
        let warnings = vec![warning(
            Feat::Nfc,
            "SKIPPED_NFC_VALIDATION",
            "warning",
            Value::Null,
        )];
        let fields = json!({
            "chip_read": false,
            "document_type": p.document_type,
            "document_number": Value::Null,
            "issuing_state": c.a3,
            "chip_data": Value::Null,
            "authenticity": Value::Null,
            "certificate_summary": Value::Null,
            "portrait_image": Value::Null,
            "signature_image": Value::Null,
        });
        return entry(Feat::Nfc, obj(fields), warnings);
    }
    let forged = ctx.traits.nfc == NfcTrait::Forged;
    let (first_name, last_name) = if forged {
        // Never the page's own surname, so the mismatch is real.
        let others: Vec<&str> = c
            .last
            .iter()
            .copied()
            .filter(|l| *l != p.last_name)
            .collect();
        (
            people::pick(rng, c.male).to_owned(),
            people::pick(rng, &others).to_owned(),
        )
    } else {
        (p.first_name.clone(), p.last_name.clone())
    };
    let mut warnings = Vec::new();
    if forged {
        warnings.push(warning(
            Feat::Nfc,
            "NFC_AND_OCR_DATA_NOT_SAME",
            "error",
            json!({"fields": ["first_name", "last_name"]}),
        ));
    }
    let signed = p.date_of_issue - time::Duration::days(rng.gen_range(30..400));
    let fields = json!({
        "chip_read": true,
        "document_type": p.document_type,
        "document_number": p.document_number,
        "issuing_state": c.a3,
        "chip_data": {
            "document_type": p.document_type,
            "issuing_country": c.a3,
            "document_number": p.document_number,
            "expiration_date": iso_date(p.expiration_date),
            "first_name": first_name,
            "last_name": last_name,
            "birth_date": iso_date(p.date_of_birth),
            "gender": p.gender,
            "nationality": c.a3,
            "place_of_birth": p.city().name,
        },
        "authenticity": {"sod_integrity": true, "dg_integrity": !forged},
        "certificate_summary": {
            "issuer": format!("CSCA {}", c.name),
            "subject": format!("Document Signer {}", c.a3),
            "serial_number": hex::encode(rng.gen::<[u8; 8]>()),
            "not_valid_before": format!("{} 00:00:00", iso_date(signed)),
            "not_valid_after": format!("{} 00:00:00", iso_date(people::add_years(signed, 10))),
        },
        "portrait_image": ctx.media("chip.jpg", rng),
        "signature_image": ctx.media("signature.jpg", rng),
        "verified_at": ctx.now_iso,
    });
    entry(Feat::Nfc, obj(fields), warnings)
}

fn liveness(ctx: &Ctx<'_>, rng: &mut SimRng) -> Value {
    let p = ctx.persona;
    let mut warnings = Vec::new();
    let value = match ctx.traits.liveness {
        LivenessTrait::Clean => score(rng, 88.0, 100.0),
        LivenessTrait::Low => {
            let s = score(rng, 55.0, 74.0);
            warnings.push(warning(
                Feat::Liveness,
                "LOW_LIVENESS_SCORE",
                "warning",
                json!({"score": s, "threshold": 75}),
            ));
            s
        }
        LivenessTrait::Attack => {
            let s = score(rng, 3.0, 30.0);
            warnings.push(warning(
                Feat::Liveness,
                "LIVENESS_FACE_ATTACK",
                "error",
                json!({"score": s}),
            ));
            s
        }
    };
    if ctx.blocked.face {
        warnings.push(warning(
            Feat::Liveness,
            "FACE_IN_BLOCKLIST",
            "error",
            Value::Null,
        ));
    }
    let matches: Vec<Value> = ctx
        .same_face
        .iter()
        .map(|s| {
            json!({
                "session_id": s.session_id,
                "session_number": s.session_number,
                "vendor_data": s.vendor_data,
                "similarity_percentage": score(rng, 96.0, 99.9),
            })
        })
        .collect();
    if !matches.is_empty() {
        warnings.push(warning(
            Feat::Liveness,
            "DUPLICATED_FACE",
            "warning",
            json!({"matches": matches.len()}),
        ));
    }
    let method = people::pick(rng, &["PASSIVE", "PASSIVE", "ACTIVE_3D", "FLASHING"]);
    let age = p.age_on(ctx.today) as f64;
    let fields = json!({
        "method": method,
        "score": value,
        "reference_image": ctx.media("selfie.jpg", rng),
        "video_url": ctx.media("liveness.mp4", rng),
        "age_estimation": round2(age + rng.gen_range(-3.5..3.5)),
        "face_quality": score(rng, 62.0, 98.0),
        "face_luminance": score(rng, 38.0, 82.0),
        "matches": matches,
    });
    entry(Feat::Liveness, obj(fields), warnings)
}

fn face_match(ctx: &Ctx<'_>, rng: &mut SimRng) -> Value {
    let p = ctx.persona;
    let reference = match ctx.reference_face {
        Some(reference) => reference,
        None => Some(p.document_face),
    };
    let value = match reference {
        Some(face) if face == p.face && ctx.traits.weak_face => score(rng, 52.0, 69.0),
        Some(face) if face == p.face => score(rng, 80.0, 99.5),
        _ => score(rng, 8.0, 44.0),
    };
    let mut warnings = Vec::new();
    if value < ctx.face_decline_below {
        warnings.push(warning(
            Feat::FaceMatch,
            "LOW_FACE_MATCH_SIMILARITY",
            "error",
            json!({"score": value, "threshold": ctx.face_decline_below}),
        ));
    } else if value < ctx.face_review_below {
        warnings.push(warning(
            Feat::FaceMatch,
            "LOW_FACE_MATCH_SIMILARITY",
            "warning",
            json!({"score": value, "threshold": ctx.face_review_below}),
        ));
    }
    let target = if ctx.reference_face.is_some() {
        "reference.jpg"
    } else {
        "portrait.jpg"
    };
    let fields = json!({
        "score": value,
        "source_image": ctx.media("selfie.jpg", rng),
        "target_image": ctx.media(target, rng),
    });
    entry(Feat::FaceMatch, obj(fields), warnings)
}

fn aml(ctx: &Ctx<'_>, rng: &mut SimRng) -> Value {
    let p = ctx.persona;
    let c = p.country();
    let birth = iso_date(p.date_of_birth);
    let year = birth[..4].to_owned();
    let hit = |rng: &mut SimRng,
               caption: String,
               datasets: &[&str],
               match_score: f64,
               risk_score: f64,
               pep: Value,
               sanction: Value| {
        json!({
            "id": format!("aml-{}", hex::encode(rng.gen::<[u8; 6]>())),
            "caption": caption,
            "datasets": datasets,
            "match_score": match_score,
            "risk_score": risk_score,
            "review_status": "Unreviewed",
            "pep_matches": pep,
            "sanction_matches": sanction,
            "adverse_media_matches": [],
            "first_seen": format!("{}-0{}-1{}T00:00:00Z", rng.gen_range(2015..2024), rng.gen_range(1..10), rng.gen_range(0..10)),
            "last_seen": format!("2026-0{}-0{}T00:00:00Z", rng.gen_range(1..3), rng.gen_range(1..10)),
            "properties": {"birthDate": [year.clone()], "country": [c.a2.to_ascii_lowercase()]},
        })
    };
    let hits: Vec<Value> = match ctx.traits.aml {
        AmlTrait::None => Vec::new(),
        AmlTrait::Sanction | AmlTrait::SanctionDeclined => {
            let (lo, hi) = if ctx.traits.aml == AmlTrait::SanctionDeclined {
                (96.0, 100.0)
            } else {
                (88.0, 99.0)
            };
            let (m, r) = (score(rng, lo, hi), score(rng, 85.0, 100.0));
            vec![hit(
                rng,
                p.full_name().to_uppercase(),
                &["us_ofac_sdn", "eu_fsf", "un_sc_sanctions"],
                m,
                r,
                json!([]),
                json!([{"list": "OFAC SDN", "program": "RUSSIA-EO14024"}, {"list": "EU Financial Sanctions"}]),
            )]
        }
        AmlTrait::Pep => {
            let (m, r) = (score(rng, 85.0, 97.0), score(rng, 40.0, 70.0));
            vec![hit(
                rng,
                p.full_name(),
                &["peps", "wd_peps"],
                m,
                r,
                json!([{"position": "Member of the regional parliament", "country": c.a2}]),
                json!([]),
            )]
        }
        AmlTrait::FalsePositive => {
            let other = people::pick(rng, c.male);
            let (m, r) = (score(rng, 45.0, 66.0), score(rng, 15.0, 45.0));
            vec![hit(
                rng,
                format!("{other} {}", p.last_name),
                &["us_ofac_sdn"],
                m,
                r,
                json!([]),
                json!([{"list": "OFAC SDN"}]),
            )]
        }
    };
    let total = hits.len();
    let top = hits
        .iter()
        .filter_map(|h| h["match_score"].as_f64())
        .fold(0.0, f64::max);
    let warnings = if hits.is_empty() {
        Vec::new()
    } else {
        // Above the workflow's AML decline threshold a match declines.
        let log_type = if ctx.traits.aml == AmlTrait::SanctionDeclined {
            "error"
        } else {
            "warning"
        };
        vec![warning(
            Feat::Aml,
            "POSSIBLE_MATCH_FOUND",
            log_type,
            json!({"total_hits": total}),
        )]
    };
    let fields = json!({
        "total_hits": total,
        "score": top,
        "entity_type": "person",
        "screened_data": {
            "full_name": p.full_name(),
            "date_of_birth": birth,
            "nationality": c.a3,
            "document_number": p.document_number,
        },
        "hits": hits,
    });
    entry(Feat::Aml, obj(fields), warnings)
}

fn ip_analysis(ctx: &Ctx<'_>, rng: &mut SimRng) -> Value {
    let p = ctx.persona;
    let c = p.country();
    let home = p.city();
    let mut warnings = Vec::new();
    let (country, country_a2, city, state, lat, lon, ip, isp, org, vpn, dc) = match ctx.traits.ip {
        IpTrait::Home => (
            c.name,
            c.a2,
            home.name,
            home.state,
            home.lat + rng.gen_range(-0.05..0.05),
            home.lon + rng.gen_range(-0.05..0.05),
            p.ip_address.clone(),
            p.isp,
            p.isp,
            false,
            false,
        ),
        IpTrait::Vpn(i) | IpTrait::DataCentre(i) => {
            let h = &HOSTING[i];
            let ip = format!(
                "{}.{}.{}.{}",
                h.block[0],
                h.block[1],
                rng.gen_range(1..255),
                rng.gen_range(1..255)
            );
            let vpn = matches!(ctx.traits.ip, IpTrait::Vpn(_));
            (
                h.country,
                h.country_a2,
                h.city.name,
                h.city.state,
                h.city.lat,
                h.city.lon,
                ip,
                h.org,
                h.org,
                vpn,
                !vpn,
            )
        }
    };
    if vpn {
        warnings.push(warning(
            Feat::Ip,
            "PRIVATE_NETWORK_DETECTED",
            "warning",
            Value::Null,
        ));
    }
    if country_a2 != c.a2 {
        warnings.push(warning(
            Feat::Ip,
            "COUNTRY_FROM_DOCUMENT_DOES_NOT_MATCH_COUNTRY_FROM_IP",
            "warning",
            json!({"document_country_code": c.a3, "ip_country_code": country_a2}),
        ));
    }
    let distance = (people::distance_km((lat, lon), (home.lat, home.lon)) * 10.0).round() / 10.0;
    let (brand, model, os, platform) = p.device;
    let browser = if platform == "mobile" {
        "Mobile Safari"
    } else {
        "Chrome"
    };
    let fields = json!({
        "device_brand": (!brand.is_empty()).then_some(brand),
        "device_model": (!model.is_empty()).then_some(model),
        "browser_family": browser,
        "os_family": os,
        "platform": platform,
        "device_fingerprint": p.device_fingerprint,
        "ip_country": country,
        "ip_country_code": country_a2,
        "ip_state": state,
        "ip_city": city,
        "latitude": round2(lat),
        "longitude": round2(lon),
        "ip_address": ip,
        "isp": isp,
        "organization": org,
        "is_vpn_or_tor": vpn,
        "is_data_center": dc,
        "time_zone": c.time_zone,
        "time_zone_offset": c.tz_offset,
        "locations_info": {
            "ip": {
                "location": {"latitude": round2(lat), "longitude": round2(lon)},
                "distance_from_id_document": distance,
            },
            "id_document": {
                "location": {"latitude": home.lat, "longitude": home.lon},
                "distance_from_ip": distance,
            },
        },
    });
    entry(Feat::Ip, obj(fields), warnings)
}

fn phone(ctx: &Ctx<'_>, _rng: &mut SimRng) -> Value {
    let p = ctx.persona;
    let c = p.country();
    let mut warnings = Vec::new();
    let (carrier, kind, disposable, virt) = match ctx.traits.phone {
        PhoneTrait::Mobile => (p.carrier, "mobile", false, false),
        PhoneTrait::Disposable => {
            warnings.push(warning(
                Feat::Phone,
                "DISPOSABLE_NUMBER_DETECTED",
                "warning",
                Value::Null,
            ));
            ("TextNow Temp", "mobile", true, false)
        }
        PhoneTrait::Voip => {
            warnings.push(warning(
                Feat::Phone,
                "VOIP_NUMBER_DETECTED",
                "warning",
                json!({"carrier_type": "voip"}),
            ));
            ("Bandwidth VoIP", "voip", false, true)
        }
    };
    if ctx.blocked.phone {
        warnings.push(warning(
            Feat::Phone,
            "PHONE_NUMBER_IN_BLOCKLIST",
            "error",
            Value::Null,
        ));
    }
    let fields = json!({
        "phone_number_prefix": c.phone_prefix,
        "phone_number": p.phone_number,
        "full_number": p.full_phone(),
        "country_code": c.a2,
        "country_name": c.name,
        "carrier": {"name": carrier, "type": kind},
        "is_disposable": disposable,
        "is_virtual": virt,
        "verification_method": "sms",
        "verification_attempts": 1,
        "verified_at": ctx.now_iso,
    });
    entry(Feat::Phone, obj(fields), warnings)
}

fn email(ctx: &Ctx<'_>, rng: &mut SimRng) -> Value {
    let p = ctx.persona;
    let mut warnings = Vec::new();
    let mut breaches = Vec::new();
    let (disposable, breached) = match ctx.traits.email {
        EmailTrait::Clean => (false, false),
        EmailTrait::Disposable => {
            warnings.push(warning(
                Feat::Email,
                "DISPOSABLE_EMAIL_DETECTED",
                "warning",
                Value::Null,
            ));
            (true, false)
        }
        EmailTrait::Breached => {
            breaches.push(json!({
                "name": "ExampleShop",
                "domain": "exampleshop.test",
                "breach_date": format!("20{}-0{}-1{}", rng.gen_range(14..24), rng.gen_range(1..10), rng.gen_range(0..10)),
            }));
            warnings.push(warning(
                Feat::Email,
                "BREACHED_EMAIL_DETECTED",
                "information",
                json!({"breaches": 1}),
            ));
            (false, true)
        }
    };
    if ctx.blocked.email {
        warnings.push(warning(
            Feat::Email,
            "EMAIL_IN_BLOCKLIST",
            "error",
            Value::Null,
        ));
    }
    let fields = json!({
        "email": p.email,
        "is_breached": breached,
        "breaches": breaches,
        "is_disposable": disposable,
        "is_undeliverable": false,
        "verification_attempts": 1,
        "verified_at": ctx.now_iso,
    });
    entry(Feat::Email, obj(fields), warnings)
}

fn poa(ctx: &Ctx<'_>, rng: &mut SimRng) -> Value {
    let p = ctx.persona;
    let issued = ctx.today - time::Duration::days(rng.gen_range(5..80));
    let fields = json!({
        "document_type": "Utility Bill",
        "issuer": p.isp,
        "issue_date": iso_date(issued),
        "address": format!("{}, {}", p.address(rng.gen_range(1..200)), p.country().name),
        "poa_country": p.country().a2,
    });
    entry(Feat::Poa, obj(fields), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::rng_for;
    use crate::scenario::{Scenario, Traits};

    fn today() -> Date {
        Date::from_calendar_date(2026, time::Month::March, 31).unwrap()
    }

    fn build_all(persona: &Persona, traits: &Traits) -> Vec<Value> {
        let ctx = Ctx {
            today: today(),
            now_iso: "2026-03-31T10:00:00.000000Z",
            base_url: "http://sim",
            session_id: "s",
            persona,
            traits,
            face_review_below: 70.0,
            face_decline_below: 50.0,
            reference_face: None,
            blocked: Blocked::default(),
            same_face: &[],
            same_document: &[],
        };
        let mut rng = rng_for(1, "t", "");
        [
            Feat::Ip,
            Feat::Id,
            Feat::Liveness,
            Feat::FaceMatch,
            Feat::Aml,
            Feat::Phone,
            Feat::Email,
        ]
        .into_iter()
        .map(|f| build(f, &ctx, &mut rng))
        .collect()
    }

    fn status(entries: &[Value]) -> &'static str {
        overall_status(entries.iter().map(|e| e["status"].as_str().unwrap()))
    }

    #[test]
    fn a_clean_person_is_approved_without_warnings() {
        let p = Persona::generate(&mut rng_for(1, "p", "a"), today());
        let entries = build_all(&p, &Traits::default());
        assert_eq!(status(&entries), "Approved");
        assert!(entries.iter().all(|e| e["warnings"] == json!([])));
    }

    #[test]
    fn scenario_traits_produce_their_risk_and_status() {
        let cases = [
            (Scenario::PrintedCopy, "PRINTED_COPY_DETECTED", "Declined"),
            (Scenario::LivenessAttack, "LIVENESS_FACE_ATTACK", "Declined"),
            (Scenario::AmlSanction, "POSSIBLE_MATCH_FOUND", "In Review"),
            (Scenario::VoipPhone, "VOIP_NUMBER_DETECTED", "In Review"),
            (
                Scenario::BreachedEmail,
                "BREACHED_EMAIL_DETECTED",
                "Approved",
            ),
            (
                Scenario::VpnCountryMismatch,
                "PRIVATE_NETWORK_DETECTED",
                "In Review",
            ),
        ];
        for (scenario, risk, expected) in cases {
            let p = Persona::generate(&mut rng_for(1, "p", scenario.name()), today());
            let traits = Traits::for_scenario(scenario, &mut rng_for(1, "t", scenario.name()));
            let entries = build_all(&p, &traits);
            let risks: Vec<&str> = entries
                .iter()
                .flat_map(|e| e["warnings"].as_array().unwrap())
                .map(|w| w["risk"].as_str().unwrap())
                .collect();
            assert!(risks.contains(&risk), "{scenario}: {risks:?}");
            assert_eq!(status(&entries), expected, "{scenario}");
        }
    }

    fn nfc_of(persona: &Persona, scenario: Scenario) -> Value {
        let traits = Traits::for_scenario(scenario, &mut rng_for(1, "t", scenario.name()));
        let ctx = Ctx {
            today: today(),
            now_iso: "2026-03-31T10:00:00.000000Z",
            base_url: "http://sim",
            session_id: "s",
            persona,
            traits: &traits,
            face_review_below: 70.0,
            face_decline_below: 50.0,
            reference_face: None,
            blocked: Blocked::default(),
            same_face: &[],
            same_document: &[],
        };
        build(Feat::Nfc, &ctx, &mut rng_for(1, "nfc", ""))
    }

    #[test]
    fn a_genuine_chip_repeats_the_document_and_a_forged_or_missing_one_does_not() {
        let p = Persona::generate(&mut rng_for(1, "p", "nfc"), today());
        let genuine = nfc_of(&p, Scenario::CleanApproval);
        assert_eq!(genuine["status"], json!("Approved"));
        assert_eq!(genuine["node_id"], json!("feature_nfc_1"));
        assert_eq!(genuine["warnings"], json!([]));
        assert_eq!(genuine["chip_read"], json!(true));
        assert_eq!(genuine["document_number"], json!(p.document_number));
        assert_eq!(genuine["chip_data"]["last_name"], json!(p.last_name));
        assert_eq!(
            genuine["authenticity"],
            json!({"sod_integrity": true, "dg_integrity": true})
        );
        let printed = nfc_of(&p, Scenario::PrintedCopy);
        assert_eq!(printed["chip_read"], json!(false));
        assert_eq!(printed["status"], json!("In Review"));
        let forged = nfc_of(&p, Scenario::DocumentRing);
        assert_eq!(forged["status"], json!("Declined"));
        assert_eq!(
            forged["warnings"][0]["risk"],
            json!("NFC_AND_OCR_DATA_NOT_SAME")
        );
    }

    #[test]
    fn the_ip_distance_to_the_document_is_given_in_locations_info() {
        let p = Persona::generate(&mut rng_for(1, "p", "x"), today());
        let traits = Traits {
            ip: IpTrait::Vpn(3),
            ..Traits::default()
        };
        let entries = build_all(&p, &traits);
        let d = entries[0]["locations_info"]["id_document"]["distance_from_ip"]
            .as_f64()
            .unwrap();
        assert!(d > 500.0, "{d}");
    }
}
