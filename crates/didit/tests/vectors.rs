//! Every signed delivery in `testdata/vectors.json` and Didit's own
//! published fixtures in `testdata/official-fixtures.json` must verify, must be
//! reproduced exactly by our signer, and must fail once any byte changes.

use didit::canonical::{canonicalize, Mode, Value};
use didit::signature::{
    sign, simple_message, Scheme, Secret, SignatureHeaders, Verifier, VerifyError,
};
use serde_json::Value as Json;

fn s<'a>(v: &'a Json, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("field {k}"))
}

struct Case {
    name: String,
    secret: String,
    body: String,
    headers: SignatureHeaders,
}

fn vector_cases() -> (Vec<Case>, Json) {
    let v = didit::testdata::vectors();
    let secret = s(&v, "secret").to_owned();
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: s(c, "name").to_owned(),
            secret: secret.clone(),
            body: s(c, "body").to_owned(),
            headers: SignatureHeaders::from_pairs(
                c["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap())),
            ),
        })
        .collect();
    (cases, v)
}

fn official_cases() -> Vec<Case> {
    let v = didit::testdata::official_fixtures();
    v.as_object()
        .unwrap()
        .iter()
        .filter(|(_, c)| c.is_object())
        .map(|(name, c)| Case {
            name: name.clone(),
            secret: s(c, "secret").to_owned(),
            body: s(c, "body").to_owned(),
            headers: SignatureHeaders {
                x_signature: Some(s(c, "x_signature").to_owned()),
                x_signature_v2: Some(s(c, "x_signature_v2").to_owned()),
                x_signature_simple: Some(s(c, "x_signature_simple").to_owned()),
                x_timestamp: None,
            },
        })
        .collect()
}

fn timestamp(body: &str) -> i64 {
    serde_json::from_str::<Json>(body).unwrap()["timestamp"]
        .as_i64()
        .unwrap()
}

fn only(h: &SignatureHeaders, which: Scheme) -> SignatureHeaders {
    SignatureHeaders {
        x_signature: (which == Scheme::Raw)
            .then(|| h.x_signature.clone())
            .flatten(),
        x_signature_v2: (which == Scheme::V2)
            .then(|| h.x_signature_v2.clone())
            .flatten(),
        x_signature_simple: (which == Scheme::Simple)
            .then(|| h.x_signature_simple.clone())
            .flatten(),
        x_timestamp: h.x_timestamp.clone(),
    }
}

fn all_cases() -> Vec<Case> {
    let mut cases = vector_cases().0;
    cases.extend(official_cases());
    assert_eq!(
        cases.len(),
        20,
        "twelve vectors and eight official fixtures"
    );
    cases
}

#[test]
fn every_vector_and_fixture_verifies_by_each_of_its_signatures() {
    for c in all_cases() {
        let now = timestamp(&c.body);
        let verifier = Verifier::new(vec![Secret::new(&c.secret)]).accept_simple(true);
        let v = verifier
            .verify(c.body.as_bytes(), &c.headers, now)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(v.scheme, Scheme::Raw, "{}", c.name);
        for scheme in [Scheme::Raw, Scheme::V2, Scheme::Simple] {
            let got = verifier
                .verify(c.body.as_bytes(), &only(&c.headers, scheme), now)
                .unwrap_or_else(|e| panic!("{} via {scheme:?}: {e}", c.name));
            assert_eq!(got.scheme, scheme, "{}", c.name);
        }
    }
}

#[test]
fn bodies_are_already_canonical_and_our_signer_reproduces_every_header() {
    for c in all_cases() {
        assert_eq!(
            canonicalize(c.body.as_bytes(), Mode::Ascii).unwrap(),
            c.body.as_bytes(),
            "{}",
            c.name
        );
        let signed = sign(
            &Secret::new(&c.secret),
            &Value::parse(c.body.as_bytes()).unwrap(),
        );
        assert_eq!(signed.body, c.body.as_bytes(), "{}", c.name);
        let header = |n: &str| {
            signed
                .headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("X-Signature"), c.headers.x_signature, "{}", c.name);
        assert_eq!(
            header("X-Signature-V2"),
            c.headers.x_signature_v2,
            "{}",
            c.name
        );
        assert_eq!(
            header("X-Signature-Simple"),
            c.headers.x_signature_simple,
            "{}",
            c.name
        );
        if c.headers.x_timestamp.is_some() {
            assert_eq!(header("X-Timestamp"), c.headers.x_timestamp, "{}", c.name);
        }
    }
}

#[test]
fn v2_messages_and_simple_messages_match_the_vectors() {
    let (_, v) = vector_cases();
    for c in v["cases"].as_array().unwrap() {
        let body = Value::parse(s(c, "body").as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(body.to_canonical(Mode::Utf8)).unwrap(),
            s(c, "v2_canonical_utf8"),
            "{}",
            s(c, "name")
        );
        assert_eq!(
            simple_message(&body),
            s(c, "simple_message"),
            "{}",
            s(c, "name")
        );
    }
}

#[test]
fn reencoded_bodies_verify_through_v2_only() {
    let (cases, v) = vector_cases();
    let secret = Secret::new(s(&v, "secret"));
    for (c, raw) in cases.iter().zip(v["cases"].as_array().unwrap()) {
        let reencoded = s(raw, "reencoded_body");
        let now = timestamp(&c.body);
        // The proxy's own raw signature is right for its bytes, but only
        // V2 ties the re-encoded body to Didit's original signature.
        assert_eq!(
            secret.sign_hex(reencoded.as_bytes()),
            s(raw, "reencoded_x_signature")
        );
        let verifier = Verifier::new(vec![secret.clone()]);
        let got = verifier
            .verify(reencoded.as_bytes(), &c.headers, now)
            .unwrap();
        assert_eq!(got.scheme, Scheme::V2, "{}", c.name);
        let raw_only = only(&c.headers, Scheme::Raw);
        assert_eq!(
            verifier
                .verify(reencoded.as_bytes(), &raw_only, now)
                .unwrap_err(),
            VerifyError::BadSignature,
            "{}",
            c.name
        );
    }
}

/// Flip one bit of every byte in turn. Every change must fail, with one
/// principled exception: V2 authenticates the parsed *value*, so that it
/// survives proxies that re-encode the body. A flip that only respells a
/// number as another literal of the same double (`0.30000000000000004` and
/// `...05` are one double) leaves the value, and so V2, intact. Such a body
/// may verify only through V2 and only when its canonical form is identical
/// to the original's; anything else is a failure of this test.
#[test]
fn any_changed_byte_fails_verification() {
    let mut respellings = 0;
    for c in all_cases() {
        let now = timestamp(&c.body);
        let verifier = Verifier::new(vec![Secret::new(&c.secret)]);
        let original = canonicalize(c.body.as_bytes(), Mode::Utf8).unwrap();
        let mut body = c.body.clone().into_bytes();
        for i in 0..body.len() {
            body[i] ^= 0x01;
            if let Ok(v) = verifier.verify(&body, &c.headers, now) {
                assert_eq!(
                    v.scheme,
                    Scheme::V2,
                    "{}: flipping byte {i} verified by {:?}",
                    c.name,
                    v.scheme
                );
                assert_eq!(
                    canonicalize(&body, Mode::Utf8).unwrap(),
                    original,
                    "{}: flipping byte {i} changed the value yet verified",
                    c.name
                );
                assert!(
                    body[i].is_ascii_digit(),
                    "{}: byte {i} is not a digit",
                    c.name
                );
                respellings += 1;
            }
            body[i] ^= 0x01;
        }
        assert!(verifier.verify(&body, &c.headers, now).is_ok());
    }
    // Only the long float literals in the numbers vector can be respelled.
    assert!(
        respellings <= 4,
        "{respellings} value-preserving respellings"
    );
}

#[test]
fn a_wrong_secret_or_a_stale_clock_fails() {
    for c in all_cases() {
        let now = timestamp(&c.body);
        let wrong = Verifier::new(vec![Secret::new("not-the-secret")]);
        assert_eq!(
            wrong
                .verify(c.body.as_bytes(), &c.headers, now)
                .unwrap_err(),
            VerifyError::BadSignature
        );
        let right = Verifier::new(vec![Secret::new(&c.secret)]);
        assert!(matches!(
            right.verify(c.body.as_bytes(), &c.headers, now + 301),
            Err(VerifyError::Stale { .. })
        ));
    }
}
