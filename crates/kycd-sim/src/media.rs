//! Stand-ins for Didit's media: tiny JPEG-framed files that carry the face
//! they show, so that a portrait fetched from one decision and passed back
//! as `portrait_image` for a biometric re-authentication is recognised.

use base64::Engine;

const MARKER: &[u8] = b"kycd-sim-face:";

/// A JPEG-framed file (SOI, a JFIF header, a comment naming the face, EOI).
/// It is not a decodable picture; it is just enough to look like one.
pub(crate) fn fake_jpeg(face: u64) -> Vec<u8> {
    let comment = format!("kycd-sim-face:{face:016x}");
    let mut out = vec![
        0xFF, 0xD8, // SOI
        0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00,
        0x01, 0x00, 0x00, // APP0 JFIF
        0xFF, 0xFE, // COM
    ];
    let len = (comment.len() + 2) as u16;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(comment.as_bytes());
    out.extend_from_slice(&[0xFF, 0xD9]); // EOI
    out
}

/// The face a file made by [`fake_jpeg`] shows; `None` for any other image.
pub(crate) fn face_of(image: &[u8]) -> Option<u64> {
    let at = image.windows(MARKER.len()).position(|w| w == MARKER)?;
    let hex = image.get(at + MARKER.len()..at + MARKER.len() + 16)?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// The largest decoded `portrait_image` Didit accepts.
pub(crate) const MAX_PORTRAIT_BYTES: usize = 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PortraitError {
    NotBase64,
    TooLarge,
    Empty,
}

/// Decodes a `portrait_image` (plain base64, or a `data:` URL).
pub(crate) fn decode_portrait(text: &str) -> Result<Vec<u8>, PortraitError> {
    let text = text.trim();
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, b)| b).unwrap_or(""),
        None => text,
    };
    // Reject before decoding what cannot fit: 4 characters carry 3 bytes.
    if payload.len() / 4 * 3 > MAX_PORTRAIT_BYTES + 3 {
        return Err(PortraitError::TooLarge);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|_| PortraitError::NotBase64)?;
    if bytes.is_empty() {
        return Err(PortraitError::Empty);
    }
    if bytes.len() > MAX_PORTRAIT_BYTES {
        return Err(PortraitError::TooLarge);
    }
    Ok(bytes)
}

/// The decoded size of a `portrait_image`, for the call log: exact for
/// valid base64 (also above the 1 MB limit, counted without decoding),
/// `None` for text that is not base64.
pub(crate) fn decoded_len(text: &str) -> Option<usize> {
    let text = text.trim();
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, b)| b).unwrap_or(""),
        None => text,
    };
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    let data = payload.trim_end_matches('=');
    let padding = payload.len() - data.len();
    if payload.len() % 4 != 0 || padding > 2 || !data.bytes().all(|b| alphabet(&b)) {
        return None;
    }
    Some(payload.len() / 4 * 3 - padding)
}

pub(crate) fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_face_survives_a_base64_round_trip() {
        let jpeg = fake_jpeg(0xdead_beef_0102_0304);
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9]);
        let back = decode_portrait(&encode(&jpeg)).unwrap();
        assert_eq!(face_of(&back), Some(0xdead_beef_0102_0304));
        let url = format!("data:image/jpeg;base64,{}", encode(&jpeg));
        assert_eq!(
            face_of(&decode_portrait(&url).unwrap()),
            Some(0xdead_beef_0102_0304)
        );
    }

    #[test]
    fn portraits_are_checked() {
        assert_eq!(
            decode_portrait("not base64!"),
            Err(PortraitError::NotBase64)
        );
        assert_eq!(decode_portrait(""), Err(PortraitError::Empty));
        let big = encode(&vec![0u8; MAX_PORTRAIT_BYTES + 1]);
        assert_eq!(decode_portrait(&big), Err(PortraitError::TooLarge));
        let exact = encode(&vec![0u8; MAX_PORTRAIT_BYTES]);
        assert!(decode_portrait(&exact).is_ok());
        assert_eq!(face_of(&[1, 2, 3]), None);
    }

    #[test]
    fn decoded_lengths_are_counted_without_decoding() {
        for n in [0, 1, 2, 3, 4, 1000, MAX_PORTRAIT_BYTES + 5] {
            assert_eq!(decoded_len(&encode(&vec![7u8; n])), Some(n), "{n}");
        }
        let url = format!("data:image/jpeg;base64,{}", encode(&[1, 2, 3, 4, 5]));
        assert_eq!(decoded_len(&url), Some(5));
        assert_eq!(decoded_len("%%%"), None);
        assert_eq!(decoded_len("abc"), None);
    }
}
