//! The scenario catalogue: what each simulated customer is, what Didit
//! makes of them, and what a perfect policy would want to know (the label).

use rand::Rng;
use serde::Serialize;

use crate::ids::SimRng;

/// Ground truth about a session's presenter: is this a legitimate customer
/// or an attack. It is not Didit's verdict: a genuine customer with an
/// expired document is declined by Didit and still `Genuine`, and a ring
/// member with a perfect-looking document is approved by Didit and still
/// `Fraudulent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    Genuine,
    Fraudulent,
}

macro_rules! scenarios {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $name:literal, weight $weight:literal, $label:ident, solo $solo:literal;
    )*) => {
        /// What a simulated customer is; see the crate README for what Didit
        /// makes of each.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Scenario {
            $($(#[$doc])* $variant,)*
        }

        impl Scenario {
            /// Every scenario, in catalogue order.
            pub const ALL: &'static [Scenario] = &[$(Scenario::$variant,)*];

            /// The snake_case name used in JSON and in `metadata.sim_scenario`.
            pub fn name(self) -> &'static str {
                match self { $(Scenario::$variant => $name,)* }
            }

            /// The scenario's relative weight in a run's draw.
            pub fn weight(self) -> u32 {
                match self { $(Scenario::$variant => $weight,)* }
            }

            /// The label of the scenario's (first) session.
            pub fn label(self) -> Label {
                match self { $(Scenario::$variant => Label::$label,)* }
            }

            /// Whether the scenario makes sense for a single session created
            /// through the API (rings and returning customers need more).
            pub fn solo(self) -> bool {
                match self { $(Scenario::$variant => $solo,)* }
            }

            /// The scenario named `name`, as [`Scenario::name`] spells it.
            pub fn from_name(name: &str) -> Option<Scenario> {
                match name { $($name => Some(Scenario::$variant),)* _ => None }
            }
        }
    };
}

// The catalogue's order is the draw's order (see [`draw`]): a new scenario
// takes its weight from the one before it and sits right after it, so that
// every other ticket of an existing seed still draws what it drew before.
scenarios! {
    /// Everything checks out: Approved (a few get a later `data.updated`).
    CleanApproval = "clean_approval", weight 42, Genuine, solo true;
    /// Approved cleanly; Didit's ongoing AML monitoring later finds the
    /// person on a sanctions list and moves the session to In Review or
    /// Declined (`status.updated` with the new screening).
    AmlMonitoringHit = "aml_monitoring_hit", weight 1, Fraudulent, solo true;
    /// A real person whose document has expired: Declined, `DOCUMENT_EXPIRED`.
    ExpiredDocument = "expired_document", weight 3, Genuine, solo true;
    /// A minor: Declined, `AGE_BELOW_MINIMUM`.
    UnderAge = "under_age", weight 2, Genuine, solo true;
    /// A photographed printout of a document: Declined, `PRINTED_COPY_DETECTED`.
    PrintedCopy = "printed_copy", weight 2, Fraudulent, solo true;
    /// A document shown on a screen: Declined, `SCREEN_CAPTURE_DETECTED`.
    ScreenReplay = "screen_replay", weight 2, Fraudulent, solo true;
    /// A mask or replayed video at the selfie: Declined, `LIVENESS_FACE_ATTACK`.
    LivenessAttack = "liveness_attack", weight 3, Fraudulent, solo true;
    /// The right person with an old photo or bad light: In Review,
    /// `LOW_FACE_MATCH_SIMILARITY` as a warning.
    WeakFaceMatch = "weak_face_match", weight 3, Genuine, solo true;
    /// Someone else's document: Declined, `LOW_FACE_MATCH_SIMILARITY` as an error.
    Impostor = "impostor", weight 2, Fraudulent, solo true;
    /// A sanctioned person: In Review, `POSSIBLE_MATCH_FOUND` on a sanctions list.
    AmlSanction = "aml_sanction", weight 1, Fraudulent, solo true;
    /// A politically exposed person: In Review, `POSSIBLE_MATCH_FOUND` on a PEP list.
    AmlPep = "aml_pep", weight 2, Genuine, solo true;
    /// A namesake on a list, weak match: In Review, `POSSIBLE_MATCH_FOUND`.
    AmlFalsePositive = "aml_false_positive", weight 2, Genuine, solo true;
    /// A VPN exit in another country: In Review, `PRIVATE_NETWORK_DETECTED`
    /// and `COUNTRY_FROM_DOCUMENT_DOES_NOT_MATCH_COUNTRY_FROM_IP`.
    VpnCountryMismatch = "vpn_country_mismatch", weight 3, Fraudulent, solo true;
    /// A data-centre address abroad: In Review, country mismatch.
    DataCentreIp = "data_centre_ip", weight 2, Fraudulent, solo true;
    /// One of a few customers sharing a document number, a device and an IP
    /// (each with their own face): Approved by Didit, `POSSIBLE_DUPLICATED_USER`
    /// as information on all but the first.
    DocumentRing = "document_ring", weight 4, Fraudulent, solo false;
    /// One person opening several accounts with the same face and document:
    /// In Review from the second on, `DUPLICATED_FACE` with liveness matches.
    MultiAccount = "multi_account", weight 2, Fraudulent, solo false;
    /// A temporary number: In Review, `DISPOSABLE_NUMBER_DETECTED`.
    DisposablePhone = "disposable_phone", weight 2, Fraudulent, solo true;
    /// A VoIP number: In Review, `VOIP_NUMBER_DETECTED`.
    VoipPhone = "voip_phone", weight 1, Fraudulent, solo true;
    /// A throwaway mailbox: In Review, `DISPOSABLE_EMAIL_DETECTED`.
    DisposableEmail = "disposable_email", weight 1, Fraudulent, solo true;
    /// An address found in old breaches: Approved, `BREACHED_EMAIL_DETECTED`
    /// as information.
    BreachedEmail = "breached_email", weight 2, Genuine, solo true;
    /// Starts and leaves halfway: Abandoned, with a partial decision.
    Abandoned = "abandoned", weight 4, Genuine, solo true;
    /// Never opens the link: Expired, no decision.
    ExpiredSession = "expired_session", weight 1, Genuine, solo true;
    /// A borderline selfie: In Review, `LOW_LIVENESS_SCORE`; Didit's reviewer approves.
    ReviewApproved = "review_approved", weight 3, Genuine, solo true;
    /// A borderline selfie: In Review, `LOW_LIVENESS_SCORE`; Didit's reviewer declines.
    ReviewDeclined = "review_declined", weight 1, Fraudulent, solo true;
    /// A blurry document: In Review, `DOCUMENT_NUMBER_NOT_DETECTED`; the
    /// reviewer sets Resubmitted for the document step, the customer redoes
    /// it, and the session is Approved.
    Resubmission = "resubmission", weight 3, Genuine, solo true;
    /// Approved, then back later for a biometric re-authentication that
    /// matches the approved portrait: Approved.
    ReturningCustomer = "returning_customer", weight 5, Genuine, solo false;
    /// Approved, then someone else attempts the biometric re-authentication:
    /// the KYC session is `Genuine`, the re-authentication `Fraudulent` and
    /// Declined with `LOW_FACE_MATCH_SIMILARITY`.
    AccountTakeover = "account_takeover", weight 1, Genuine, solo false;
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A receiver's outcome for a session, in the words kycd's policies use.
/// The ground truth ([`Expectation`]) names the outcomes that are right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approve,
    Review,
    StepUp,
    Resubmit,
    Decline,
    Block,
}

impl Outcome {
    /// Every outcome, from the most to the least favourable to the customer.
    pub const ALL: &'static [Outcome] = &[
        Outcome::Approve,
        Outcome::Review,
        Outcome::StepUp,
        Outcome::Resubmit,
        Outcome::Decline,
        Outcome::Block,
    ];

    /// The snake_case name (`step_up`), as kycd's decisions spell it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Approve => "approve",
            Outcome::Review => "review",
            Outcome::StepUp => "step_up",
            Outcome::Resubmit => "resubmit",
            Outcome::Decline => "decline",
            Outcome::Block => "block",
        }
    }

    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.iter().copied().find(|o| o.name() == name)
    }

    /// Whether the outcome asks for a person or more proof.
    pub fn is_friction(self) -> bool {
        matches!(self, Outcome::Review | Outcome::StepUp | Outcome::Resubmit)
    }
}

/// The kind of outcome a careful operator should reach for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// An eligible, genuine customer: approve, ideally without friction.
    Approve,
    /// Needs a person or more proof (review, step-up, resubmission) before
    /// anyone can say.
    Refer,
    /// Must not be approved: an attack, a listed person, or a genuine
    /// customer who is not eligible (a minor, an expired document, a
    /// session left halfway or never started).
    Reject,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Refer => "refer",
            Verdict::Reject => "reject",
        }
    }
}

/// The ground truth of one session: the outcome a careful operator should
/// reach, and which final outcomes are right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Expectation {
    pub verdict: Verdict,
    /// The final outcomes that are right for the session.
    pub acceptable: &'static [Outcome],
    /// A final approval is also right after one of these came first: the
    /// person or the proof asked for cleared the customer. Empty when an
    /// approval is never right, or always is (then it is in `acceptable`).
    pub approve_after: &'static [Outcome],
}

impl Expectation {
    /// Whether `outcome` is a right final outcome, given the outcomes the
    /// receiver reached on the way (`earlier`, in any order).
    pub fn accepts(&self, outcome: Outcome, earlier: &[Outcome]) -> bool {
        self.acceptable.contains(&outcome)
            || (outcome == Outcome::Approve
                && earlier.iter().any(|o| self.approve_after.contains(o)))
    }

    /// Whether the session is an eligible genuine customer's: one to
    /// approve, ideally without friction.
    pub fn is_eligible(&self) -> bool {
        self.verdict == Verdict::Approve
    }
}

const APPROVE: &[Outcome] = &[Outcome::Approve];
const STOP: &[Outcome] = &[Outcome::Decline, Outcome::Block];
const STOP_OR_REVIEW: &[Outcome] = &[Outcome::Review, Outcome::Decline, Outcome::Block];
const NOT_APPROVE: &[Outcome] = &[
    Outcome::Review,
    Outcome::StepUp,
    Outcome::Resubmit,
    Outcome::Decline,
    Outcome::Block,
];
const FRICTION: &[Outcome] = &[Outcome::Review, Outcome::StepUp, Outcome::Resubmit];
const DECLINE: &[Outcome] = &[Outcome::Decline];
const REVIEW: &[Outcome] = &[Outcome::Review];

impl Scenario {
    /// What a careful operator should reach for a session of this scenario
    /// presented with `label` (an account takeover's re-authentication is
    /// fraudulent, its KYC session genuine). The crate README's catalogue
    /// gives the reasons.
    pub fn expectation(self, label: Label) -> Expectation {
        let (verdict, acceptable, approve_after): (Verdict, &[Outcome], &[Outcome]) =
            match (self, label) {
                // A fraudulent session of a mostly genuine scenario (a
                // takeover's re-authentication, a later session of someone
                // who attacked before): never approve.
                (_, Label::Fraudulent) if self.label() == Label::Genuine => {
                    (Verdict::Reject, STOP, &[])
                }
                (
                    Scenario::CleanApproval
                    | Scenario::BreachedEmail
                    | Scenario::ReturningCustomer
                    | Scenario::AccountTakeover,
                    _,
                ) => (Verdict::Approve, APPROVE, &[]),
                // Not eligible, through no fault of their own: declined,
                // not blocklisted (they may come back eligible).
                (
                    Scenario::ExpiredDocument
                    | Scenario::UnderAge
                    | Scenario::Abandoned
                    | Scenario::ExpiredSession,
                    _,
                ) => (Verdict::Reject, DECLINE, &[]),
                (
                    Scenario::PrintedCopy
                    | Scenario::ScreenReplay
                    | Scenario::LivenessAttack
                    | Scenario::Impostor
                    | Scenario::ReviewDeclined,
                    _,
                ) => (Verdict::Reject, STOP, &[]),
                // A list hit, or an identity shared across accounts: held
                // back for a person is right too.
                (
                    Scenario::AmlSanction
                    | Scenario::AmlMonitoringHit
                    | Scenario::DocumentRing
                    | Scenario::MultiAccount,
                    _,
                ) => (Verdict::Reject, STOP_OR_REVIEW, &[]),
                // Signals a genuine customer can have too (travellers,
                // cheap phone plans): more proof first, never a plain
                // approval.
                (
                    Scenario::VpnCountryMismatch
                    | Scenario::DataCentreIp
                    | Scenario::DisposablePhone
                    | Scenario::VoipPhone
                    | Scenario::DisposableEmail,
                    _,
                ) => (Verdict::Refer, NOT_APPROVE, &[]),
                // The right person with a poor face match: more proof, and
                // approved once it came.
                (Scenario::WeakFaceMatch, _) => (Verdict::Refer, FRICTION, FRICTION),
                // A politically exposed person needs a person's enhanced
                // due diligence; a namesake needs a person (or more proof)
                // to tell apart.
                (Scenario::AmlPep, _) => (Verdict::Refer, REVIEW, REVIEW),
                (Scenario::AmlFalsePositive, _) => (
                    Verdict::Refer,
                    &[Outcome::Review, Outcome::StepUp],
                    &[Outcome::Review, Outcome::StepUp],
                ),
                // Didit's own reviewer looks (and approves, or has the
                // document redone): approved in the end is right.
                (Scenario::ReviewApproved, _) => {
                    (Verdict::Refer, &[Outcome::Approve, Outcome::Review], &[])
                }
                (Scenario::Resubmission, _) => (
                    Verdict::Refer,
                    &[Outcome::Approve, Outcome::Review, Outcome::Resubmit],
                    &[],
                ),
            };
        Expectation {
            verdict,
            acceptable,
            approve_after,
        }
    }
}

/// Draws a scenario by weight, from every scenario or only the solo ones.
pub(crate) fn draw(rng: &mut SimRng, solo_only: bool) -> Scenario {
    let pool = Scenario::ALL
        .iter()
        .copied()
        .filter(|s| !solo_only || s.solo());
    let total: u32 = pool.clone().map(Scenario::weight).sum();
    let mut ticket = rng.gen_range(0..total);
    for s in pool {
        if ticket < s.weight() {
            return s;
        }
        ticket -= s.weight();
    }
    Scenario::CleanApproval
}

/// How each check behaves for the person presenting a session. Built from
/// the scenario; a genuine customer's resubmitted step is redone clean.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Traits {
    pub document: DocTrait,
    pub liveness: LivenessTrait,
    /// A poor-quality but same-person face match.
    pub weak_face: bool,
    pub aml: AmlTrait,
    pub ip: IpTrait,
    pub phone: PhoneTrait,
    pub email: EmailTrait,
    /// What an NFC step finds on the document's chip.
    pub nfc: NfcTrait,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum DocTrait {
    #[default]
    Clean,
    Printed,
    Screen,
    /// Too blurry to read the number.
    Blurry,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum LivenessTrait {
    #[default]
    Clean,
    Low,
    Attack,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum AmlTrait {
    #[default]
    None,
    Sanction,
    /// A sanctions hit strong enough for the workflow to decline (ongoing
    /// monitoring's confirmed match): the AML warning is an error.
    SanctionDeclined,
    Pep,
    FalsePositive,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum IpTrait {
    #[default]
    Home,
    /// A VPN exit at `HOSTING[i]`.
    Vpn(usize),
    /// A data-centre address at `HOSTING[i]`.
    DataCentre(usize),
}

/// The document's chip, for workflows with NFC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum NfcTrait {
    /// A genuine document: the chip reads, its signature and data-group
    /// hashes check out, and its data is what the page shows.
    #[default]
    Genuine,
    /// A printout or a screen has no chip to read.
    NoChip,
    /// A forged document (a ring's reused number): the chip does not match
    /// the printed page.
    Forged,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum PhoneTrait {
    #[default]
    Mobile,
    Disposable,
    Voip,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum EmailTrait {
    #[default]
    Clean,
    Disposable,
    Breached,
}

impl Traits {
    pub(crate) fn for_scenario(scenario: Scenario, rng: &mut SimRng) -> Self {
        let mut t = Traits::default();
        let hosting = rng.gen_range(0..crate::people::HOSTING.len());
        match scenario {
            Scenario::PrintedCopy => {
                t.document = DocTrait::Printed;
                t.nfc = NfcTrait::NoChip;
            }
            Scenario::ScreenReplay => {
                t.document = DocTrait::Screen;
                t.nfc = NfcTrait::NoChip;
            }
            Scenario::DocumentRing => t.nfc = NfcTrait::Forged,
            Scenario::Resubmission => t.document = DocTrait::Blurry,
            Scenario::LivenessAttack => t.liveness = LivenessTrait::Attack,
            Scenario::ReviewApproved | Scenario::ReviewDeclined => t.liveness = LivenessTrait::Low,
            Scenario::WeakFaceMatch => t.weak_face = true,
            Scenario::AmlSanction => t.aml = AmlTrait::Sanction,
            Scenario::AmlPep => t.aml = AmlTrait::Pep,
            Scenario::AmlFalsePositive => t.aml = AmlTrait::FalsePositive,
            Scenario::VpnCountryMismatch => t.ip = IpTrait::Vpn(hosting),
            Scenario::DataCentreIp => t.ip = IpTrait::DataCentre(hosting),
            Scenario::DisposablePhone => t.phone = PhoneTrait::Disposable,
            Scenario::VoipPhone => t.phone = PhoneTrait::Voip,
            Scenario::DisposableEmail => t.email = EmailTrait::Disposable,
            Scenario::BreachedEmail => t.email = EmailTrait::Breached,
            _ => {}
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::rng_for;

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_name(s.name()), Some(*s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.name())
            );
        }
    }

    #[test]
    fn the_draw_follows_the_weights_roughly() {
        let mut rng = rng_for(1, "draw", "");
        let n = 20_000;
        let clean = (0..n)
            .filter(|_| draw(&mut rng, false) == Scenario::CleanApproval)
            .count();
        let total: u32 = Scenario::ALL.iter().map(|s| s.weight()).sum();
        let expected = n as f64 * f64::from(Scenario::CleanApproval.weight()) / f64::from(total);
        assert!(
            (clean as f64 - expected).abs() < expected * 0.1,
            "{clean} vs {expected}"
        );
    }

    #[test]
    fn solo_draws_never_need_other_customers() {
        let mut rng = rng_for(2, "draw", "");
        assert!((0..5000).all(|_| draw(&mut rng, true).solo()));
    }

    #[test]
    fn fraud_is_never_right_approved_and_eligible_customers_only_approved() {
        for s in Scenario::ALL {
            for label in [Label::Genuine, Label::Fraudulent] {
                let e = s.expectation(label);
                let friction = [Outcome::Review, Outcome::StepUp, Outcome::Resubmit];
                if label == Label::Fraudulent {
                    assert!(!e.accepts(Outcome::Approve, &friction), "{s}");
                    assert_ne!(e.verdict, Verdict::Approve, "{s}");
                }
                match e.verdict {
                    Verdict::Approve => assert_eq!(e.acceptable, [Outcome::Approve], "{s}"),
                    Verdict::Reject => {
                        assert!(!e.accepts(Outcome::Approve, &friction), "{s}");
                        assert!(e.accepts(Outcome::Decline, &[]), "{s}");
                    }
                    Verdict::Refer => {
                        assert!(e.acceptable.iter().any(|o| o.is_friction()), "{s}")
                    }
                }
            }
        }
    }

    #[test]
    fn the_ineligible_are_the_genuine_customers_kycd_must_decline() {
        let ineligible: Vec<Scenario> = Scenario::ALL
            .iter()
            .copied()
            .filter(|s| s.label() == Label::Genuine)
            .filter(|s| s.expectation(Label::Genuine).verdict == Verdict::Reject)
            .collect();
        assert_eq!(
            ineligible,
            [
                Scenario::ExpiredDocument,
                Scenario::UnderAge,
                Scenario::Abandoned,
                Scenario::ExpiredSession
            ]
        );
        for s in ineligible {
            // Declined, not blocklisted: they may come back eligible.
            let e = s.expectation(Label::Genuine);
            assert_eq!(e.acceptable, [Outcome::Decline]);
        }
    }

    #[test]
    fn an_approval_after_the_asked_for_proof_is_right_where_the_scenario_says() {
        let weak = Scenario::WeakFaceMatch.expectation(Label::Genuine);
        assert!(!weak.accepts(Outcome::Approve, &[]));
        assert!(weak.accepts(Outcome::Approve, &[Outcome::StepUp]));
        assert!(weak.accepts(Outcome::Resubmit, &[]));
        assert!(!weak.accepts(Outcome::Decline, &[]));
        let pep = Scenario::AmlPep.expectation(Label::Genuine);
        assert!(!pep.accepts(Outcome::Approve, &[Outcome::StepUp]));
        assert!(pep.accepts(Outcome::Approve, &[Outcome::Review]));
        // A takeover's re-authentication is fraud, its KYC session is not.
        let takeover = Scenario::AccountTakeover;
        assert_eq!(
            takeover.expectation(Label::Genuine).verdict,
            Verdict::Approve
        );
        assert_eq!(
            takeover.expectation(Label::Fraudulent).acceptable,
            [Outcome::Decline, Outcome::Block]
        );
    }

    #[test]
    fn outcome_names_are_kycds() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.name()), Some(*o));
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::json!(o.name())
            );
        }
        assert_eq!(Outcome::StepUp.name(), "step_up");
    }

    #[test]
    fn a_new_scenario_keeps_the_draws_of_existing_seeds() {
        // Tickets 0-41 draw clean_approval, 42 the monitoring hit, and
        // every ticket above it what it drew before the hit was added.
        let ticket_of = |s: Scenario| -> u32 {
            Scenario::ALL
                .iter()
                .take_while(|x| **x != s)
                .map(|x| x.weight())
                .sum()
        };
        assert_eq!(ticket_of(Scenario::AmlMonitoringHit), 42);
        assert_eq!(ticket_of(Scenario::ExpiredDocument), 43);
    }

    #[test]
    fn the_catalogue_weights_sum_to_100() {
        let total: u32 = Scenario::ALL.iter().map(|s| s.weight()).sum();
        assert_eq!(total, 100);
    }
}
