//! Canonical JSON exactly as Didit writes it (docs/didit-protocol.md 1.1 and 1.2).
//!
//! Didit computes its body, and the `X-Signature-V2` message, as Python's
//! `json.dumps(payload, sort_keys=True, separators=(",", ":"))` after turning
//! integral floats into ints. Reproducing that byte for byte is the whole
//! point of this module, so it has its own small parser rather than going
//! through `serde_json::Value`, which would lose what matters:
//!
//! - **numbers keep their literal text.** An integer of any size is written
//!   back digit for digit; a float is parsed (correctly rounded, as Python's
//!   `float()` does), and if its value is integral it is written as the exact
//!   integer it holds, of any magnitude (`1.5e300` becomes 301 digits),
//!   otherwise as Python's `repr`: the shortest digits that round-trip,
//!   positional when the decimal exponent is at least -4, else scientific
//!   with a signed exponent of at least two digits (`5e-05`);
//! - **keys sort by code point**, which for UTF-8 is plain byte order of the
//!   decoded key (not UTF-16 order, and not numeric order for `"10"`);
//! - **duplicate keys**: the last one wins, as in a Python dict;
//! - **strings** are re-escaped for the requested [`Mode`]: ASCII (the wire
//!   body and `X-Signature`) escapes everything above U+007E as lowercase
//!   `\uXXXX`, surrogate pairs for astral characters; UTF-8 (`X-Signature-V2`)
//!   writes every non-ASCII character, and U+007F, as raw UTF-8. Both use the
//!   short escapes `\" \\ \b \f \n \r \t`, `\u00XX` for other control
//!   characters, and never escape `/`.
//!
//! Input that Python would accept but a webhook must never carry is refused
//! with a clear error: invalid UTF-8, lone surrogates, `NaN`/`Infinity`,
//! numbers that overflow to infinity, trailing data, and nesting deeper than
//! [`MAX_DEPTH`]. The parser is recursive only to [`MAX_DEPTH`] levels, so
//! hostile input cannot overflow the stack.

use std::borrow::Cow;
use std::fmt;

/// The deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 128;

/// Which of Didit's two canonical forms to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `ensure_ascii=True`: the wire body, signed by `X-Signature`.
    Ascii,
    /// `ensure_ascii=False`: the message signed by `X-Signature-V2`.
    Utf8,
}

/// Why a body could not be canonicalised. Offsets are byte offsets into the
/// input; no part of the input itself is ever included, since bodies carry
/// personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("invalid utf-8 at byte {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("unexpected end of input")]
    UnexpectedEnd,
    #[error("expected {expected} at byte {offset}")]
    Syntax {
        offset: usize,
        expected: &'static str,
    },
    #[error("unescaped control character in string at byte {offset}")]
    ControlCharacter { offset: usize },
    #[error("invalid escape sequence at byte {offset}")]
    InvalidEscape { offset: usize },
    #[error("lone surrogate in \\u escape at byte {offset}")]
    LoneSurrogate { offset: usize },
    #[error("non-finite number literal at byte {offset}: NaN and Infinity are not json")]
    NonFinite { offset: usize },
    #[error("number at byte {offset} is too large for a double")]
    NumberOutOfRange { offset: usize },
    #[error("nesting deeper than {limit} levels at byte {offset}")]
    TooDeep { offset: usize, limit: usize },
    #[error("trailing data after the json value at byte {offset}")]
    TrailingData { offset: usize },
}

/// A parsed JSON value that still remembers how its numbers and strings were
/// written, borrowing from the input wherever it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// The number's literal text, already validated against the JSON grammar.
    Number(Cow<'a, str>),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Members sorted by key (code point order), duplicates resolved (last
    /// wins). Kept sorted by every constructor in this module.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

impl<'a> Value<'a> {
    /// Parse one JSON document (surrounding whitespace allowed).
    pub fn parse(input: &'a [u8]) -> Result<Self, CanonicalError> {
        let text = std::str::from_utf8(input).map_err(|e| CanonicalError::InvalidUtf8 {
            offset: e.valid_up_to(),
        })?;
        let mut p = Parser {
            src: text,
            bytes: input,
            pos: 0,
        };
        p.skip_ws();
        let value = p.value(0)?;
        p.skip_ws();
        if p.pos != input.len() {
            return Err(CanonicalError::TrailingData { offset: p.pos });
        }
        Ok(value)
    }

    /// A top-level member of an object, if this is one.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Object(members) => members
                .binary_search_by(|(k, _)| k.as_ref().cmp(key))
                .ok()
                .map(|i| &members[i].1),
            _ => None,
        }
    }

    /// Insert or replace a member of an object, keeping the order canonical.
    /// Does nothing to values that are not objects.
    pub fn set(&mut self, key: &str, value: Value<'a>) {
        if let Value::Object(members) = self {
            match members.binary_search_by(|(k, _)| k.as_ref().cmp(key)) {
                Ok(i) => members[i].1 = value,
                Err(i) => members.insert(i, (Cow::Owned(key.to_owned()), value)),
            }
        }
    }

    /// The text a scalar contributes to Didit's `X-Signature-Simple` message:
    /// strings as their content, numbers in canonical form, anything else as
    /// its canonical JSON.
    pub fn simple_text(&self) -> String {
        match self {
            Value::String(s) => s.to_string(),
            other => String::from_utf8_lossy(&other.to_canonical(Mode::Utf8)).into_owned(),
        }
    }

    /// Write this value canonically into `out`.
    pub fn write(&self, mode: Mode, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(lit) => write_number(lit, out),
            Value::String(s) => write_string(s, mode, out),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(mode, out);
                }
                out.push(b']');
            }
            Value::Object(members) => write_members(members.iter(), mode, out),
        }
    }

    /// Write this value canonically into `out` as if the object member
    /// `key` were absent (any other value is written whole). Saves cloning
    /// the tree to remove one member, e.g. to digest a body without its id.
    pub fn write_without(&self, key: &str, mode: Mode, out: &mut Vec<u8>) {
        let Value::Object(members) = self else {
            return self.write(mode, out);
        };
        write_members(members.iter().filter(|(k, _)| k != key), mode, out);
    }

    /// Whether every number in the document has a finite value as a
    /// double. Integers are kept digit for digit here, of any size, so the
    /// signature of a body carrying a 309-digit integer verifies; but every
    /// reader of the decoded body (serde_json, hence the projector, and
    /// most of the operator's tools) reads a number as a double at most,
    /// and refuses one beyond `f64::MAX`. The intake treats such a body as
    /// authentic but unusable, so that it is refused before it is
    /// acknowledged rather than acknowledged and never projected.
    pub fn numbers_fit_f64(&self) -> bool {
        match self {
            Value::Number(text) => {
                // Anything with at most 20 characters fits an i64, a u64 or
                // a double; only longer literals need the parse.
                text.len() <= 20 || text.parse::<f64>().is_ok_and(f64::is_finite)
            }
            Value::Array(items) => items.iter().all(Value::numbers_fit_f64),
            Value::Object(members) => members.iter().all(|(_, v)| v.numbers_fit_f64()),
            Value::Null | Value::Bool(_) | Value::String(_) => true,
        }
    }

    /// This value's canonical bytes.
    pub fn to_canonical(&self, mode: Mode) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(mode, &mut out);
        out
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_canonical(Mode::Utf8)))
    }
}

/// Parse `input` and write it back in canonical form.
pub fn canonicalize(input: &[u8], mode: Mode) -> Result<Vec<u8>, CanonicalError> {
    let value = Value::parse(input)?;
    let mut out = Vec::with_capacity(input.len() + input.len() / 8);
    value.write(mode, &mut out);
    Ok(out)
}

struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Result<u8, CanonicalError> {
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(CanonicalError::UnexpectedEnd)
    }

    fn expect_literal(&mut self, lit: &'static str) -> Result<(), CanonicalError> {
        if self.bytes[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            Ok(())
        } else if self.pos + lit.len() > self.bytes.len()
            && lit.as_bytes().starts_with(&self.bytes[self.pos..])
        {
            Err(CanonicalError::UnexpectedEnd)
        } else {
            Err(CanonicalError::Syntax {
                offset: self.pos,
                expected: lit,
            })
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, CanonicalError> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => Ok(Value::String(self.string()?)),
            b't' => self.expect_literal("true").map(|_| Value::Bool(true)),
            b'f' => self.expect_literal("false").map(|_| Value::Bool(false)),
            b'n' => self.expect_literal("null").map(|_| Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            b'N' | b'I' => Err(CanonicalError::NonFinite { offset: self.pos }),
            _ => Err(CanonicalError::Syntax {
                offset: self.pos,
                expected: "a json value",
            }),
        }
    }

    fn enter(&self, depth: usize) -> Result<(), CanonicalError> {
        if depth > MAX_DEPTH {
            Err(CanonicalError::TooDeep {
                offset: self.pos,
                limit: MAX_DEPTH,
            })
        } else {
            Ok(())
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value<'a>, CanonicalError> {
        self.enter(depth)?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek()? == b']' {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => {
                    return Err(CanonicalError::Syntax {
                        offset: self.pos,
                        expected: "',' or ']'",
                    })
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value<'a>, CanonicalError> {
        self.enter(depth)?;
        self.pos += 1; // '{'
        let mut members: Vec<(Cow<'a, str>, Value<'a>)> = Vec::new();
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek()? != b'"' {
                return Err(CanonicalError::Syntax {
                    offset: self.pos,
                    expected: "a string key",
                });
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek()? != b':' {
                return Err(CanonicalError::Syntax {
                    offset: self.pos,
                    expected: "':'",
                });
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    break;
                }
                _ => {
                    return Err(CanonicalError::Syntax {
                        offset: self.pos,
                        expected: "',' or '}'",
                    })
                }
            }
        }
        Ok(Value::Object(sort_members(members)))
    }

    /// A string's decoded content; borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, CanonicalError> {
        self.pos += 1; // opening quote
        let start = self.pos;
        // Fast scan: most strings have no escapes and end at the next quote.
        loop {
            match self.bytes.get(self.pos) {
                None => return Err(CanonicalError::UnexpectedEnd),
                Some(b'"') => {
                    let s = &self.src[start..self.pos];
                    self.pos += 1;
                    return Ok(Cow::Borrowed(s));
                }
                Some(b'\\') => break,
                Some(&b) if b < 0x20 => {
                    return Err(CanonicalError::ControlCharacter { offset: self.pos })
                }
                Some(_) => self.pos += 1,
            }
        }
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(&self.src[start..self.pos]);
        loop {
            let run = self.pos;
            while let Some(&b) = self.bytes.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.src[run..self.pos]);
            match self.bytes.get(self.pos) {
                None => return Err(CanonicalError::UnexpectedEnd),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => self.escape(&mut out)?,
                Some(_) => return Err(CanonicalError::ControlCharacter { offset: self.pos }),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), CanonicalError> {
        let at = self.pos;
        self.pos += 1; // backslash
        let c = self.peek()?;
        self.pos += 1;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                if (0xDC00..0xE000).contains(&hi) {
                    return Err(CanonicalError::LoneSurrogate { offset: at });
                }
                if (0xD800..0xDC00).contains(&hi) {
                    if !self.bytes[self.pos..].starts_with(b"\\u") {
                        return Err(CanonicalError::LoneSurrogate { offset: at });
                    }
                    self.pos += 2;
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(CanonicalError::LoneSurrogate { offset: at });
                    }
                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    char::from_u32(cp).ok_or(CanonicalError::InvalidEscape { offset: at })?
                } else {
                    char::from_u32(hi).ok_or(CanonicalError::InvalidEscape { offset: at })?
                }
            }
            _ => return Err(CanonicalError::InvalidEscape { offset: at }),
        };
        out.push(ch);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, CanonicalError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or(CanonicalError::UnexpectedEnd)?;
        let mut v = 0u32;
        for &d in digits {
            let n = (d as char)
                .to_digit(16)
                .ok_or(CanonicalError::InvalidEscape { offset: self.pos })?;
            v = v * 16 + n;
        }
        self.pos += 4;
        Ok(v)
    }

    /// Validate a number against the JSON grammar and keep its literal.
    fn number(&mut self) -> Result<Value<'a>, CanonicalError> {
        let start = self.pos;
        let b = self.bytes;
        let mut i = self.pos;
        if b[i] == b'-' {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = b.get(i) {
                    i += 1;
                }
            }
            Some(b'I') => return Err(CanonicalError::NonFinite { offset: start }),
            None => return Err(CanonicalError::UnexpectedEnd),
            _ => {
                return Err(CanonicalError::Syntax {
                    offset: i,
                    expected: "a digit",
                })
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let digits = i;
            while let Some(b'0'..=b'9') = b.get(i) {
                i += 1;
            }
            if i == digits {
                return Err(CanonicalError::Syntax {
                    offset: i,
                    expected: "a digit after '.'",
                });
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let digits = i;
            while let Some(b'0'..=b'9') = b.get(i) {
                i += 1;
            }
            if i == digits {
                return Err(CanonicalError::Syntax {
                    offset: i,
                    expected: "a digit in the exponent",
                });
            }
        }
        self.pos = i;
        let lit = &self.src[start..i];
        // Refuse, at parse time, floats that overflow: Python would write
        // `Infinity`, which is not JSON and cannot be signed meaningfully.
        if !is_integer_literal(lit) {
            let f: f64 = lit.parse().map_err(|_| CanonicalError::Syntax {
                offset: start,
                expected: "a number",
            })?;
            if !f.is_finite() {
                return Err(CanonicalError::NumberOutOfRange { offset: start });
            }
        }
        Ok(Value::Number(Cow::Borrowed(lit)))
    }
}

/// Sort members by key in code point order (byte order of UTF-8) and keep
/// only the last of any duplicate key, as a Python dict would.
fn sort_members<'a>(mut members: Vec<(Cow<'a, str>, Value<'a>)>) -> Vec<(Cow<'a, str>, Value<'a>)> {
    // Payloads arrive already sorted almost always; checking is cheaper than
    // sorting, and a strictly increasing sequence also has no duplicates.
    if members.windows(2).all(|w| w[0].0 < w[1].0) {
        return members;
    }
    // A stable sort keeps equal keys in input order, so the last of each run
    // is the one that was written last.
    members.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(Cow<'a, str>, Value<'a>)> = Vec::with_capacity(members.len());
    for m in members {
        match out.last_mut() {
            Some(last) if last.0 == m.0 => *last = m,
            _ => out.push(m),
        }
    }
    out
}

fn is_integer_literal(lit: &str) -> bool {
    !lit.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

/// Write a validated number literal in canonical form.
fn write_number(lit: &str, out: &mut Vec<u8>) {
    if is_integer_literal(lit) {
        // Integers keep their exact digits; Python's int has no `-0`.
        if lit == "-0" {
            out.push(b'0');
        } else {
            out.extend_from_slice(lit.as_bytes());
        }
        return;
    }
    // The literal was validated and checked finite when it was parsed (or
    // built by this crate), so parsing cannot fail here; 0 is a safe
    // fallback that keeps this function total.
    let f: f64 = lit.parse().unwrap_or(0.0);
    write_float(f, out);
}

/// Write a finite double the way Didit does: integral values as the exact
/// integer, others as Python's `repr`.
pub fn write_float(f: f64, out: &mut Vec<u8>) {
    if f.fract() == 0.0 {
        write_integral_float(f, out);
    } else {
        write_python_repr(f, out);
    }
}

/// An integral double as its exact decimal integer, of any magnitude.
fn write_integral_float(f: f64, out: &mut Vec<u8>) {
    // 2^63 and above do not fit an i64; below, the cast is exact.
    if f.abs() < (1u64 << 63) as f64 {
        let n = f as i64;
        out.extend_from_slice(n.to_string().as_bytes());
        return;
    }
    // value = mantissa * 2^exp with exp > 0 here (the value is >= 2^63).
    let bits = f.to_bits();
    let negative = bits >> 63 == 1;
    let raw_exp = ((bits >> 52) & 0x7FF) as i32;
    let mantissa = (bits & ((1u64 << 52) - 1)) | (1u64 << 52);
    let mut exp = raw_exp - 1075;
    // Little-endian limbs in base 10^9.
    const BASE: u64 = 1_000_000_000;
    let mut limbs: Vec<u64> = vec![
        mantissa % BASE,
        (mantissa / BASE) % BASE,
        mantissa / (BASE * BASE),
    ];
    while exp > 0 {
        let step = exp.min(30);
        let mut carry = 0u64;
        for limb in limbs.iter_mut() {
            let v = (*limb << step) + carry;
            *limb = v % BASE;
            carry = v / BASE;
        }
        while carry > 0 {
            limbs.push(carry % BASE);
            carry /= BASE;
        }
        exp -= step;
    }
    while limbs.len() > 1 && limbs.last() == Some(&0) {
        limbs.pop();
    }
    if negative {
        out.push(b'-');
    }
    let mut iter = limbs.iter().rev();
    if let Some(first) = iter.next() {
        out.extend_from_slice(first.to_string().as_bytes());
    }
    for limb in iter {
        out.extend_from_slice(format!("{limb:09}").as_bytes());
    }
}

/// Python's `repr` of a finite, non-integral double.
fn write_python_repr(f: f64, out: &mut Vec<u8>) {
    // Rust's `{:e}` writes the shortest digits that round-trip, closest to
    // the exact value, as does Python's repr (both are "shortest" modes of
    // correctly rounded conversions); only the layout differs.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let digits = break_tie_to_even(f, digits, exp);
    if negative {
        out.push(b'-');
    }
    if exp >= -4 {
        // Positional. A non-integral double is below 2^53 < 10^16, so the
        // decimal point always falls inside or before the digits.
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-point) as usize));
            out.extend_from_slice(digits.as_bytes());
        } else {
            let point = point as usize;
            let (int, frac) = digits.split_at(point.min(digits.len()));
            out.extend_from_slice(int.as_bytes());
            out.push(b'.');
            if frac.is_empty() {
                out.push(b'0');
            } else {
                out.extend_from_slice(frac.as_bytes());
            }
        }
    } else {
        let (first, rest) = digits.split_at(1);
        out.extend_from_slice(first.as_bytes());
        if !rest.is_empty() {
            out.push(b'.');
            out.extend_from_slice(rest.as_bytes());
        }
        out.extend_from_slice(format!("e-{:02}", -exp).as_bytes());
    }
}

/// When a double lies exactly halfway between the two shortest decimal
/// candidates (`1801255537148536.25` between `...536.2` and `...536.3`),
/// Python's repr (David Gay's dtoa) picks the one with an even last digit,
/// while Rust's shortest formatting rounds up. Detect the tie from the exact
/// expansion and choose as Python does; found by the python3 oracle test.
fn break_tie_to_even(f: f64, digits: String, exp: i32) -> String {
    let n = digits.len();
    // A tie needs the exact value to end with its 5 right after the shortest
    // digits; almost no double does, and this test is exact and cheap, while
    // the wide formatting below costs more than the rest of the number.
    if last_digit_exponent(f) != Some(exp - n as i32) {
        return digits;
    }
    // The exact value with 20 digits to spare: a tie means the digit after
    // the shortest ones is a 5 and nothing follows it.
    let wide = format!("{:.*e}", n + 20, f.abs());
    let Some((mantissa, e)) = wide.split_once('e') else {
        return digits;
    };
    if e.parse::<i32>().ok() != Some(exp) {
        return digits;
    }
    let all: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    if all.len() != n + 21 || all[n] != b'5' || all[n + 1..].iter().any(|&b| b != b'0') {
        return digits;
    }
    let down = &all[..n];
    let chosen: Vec<u8> = if (down[n - 1] - b'0').is_multiple_of(2) {
        down.to_vec()
    } else {
        // Round up; an all-nines prefix would change the length: leave it.
        let mut up = down.to_vec();
        let mut i = n;
        loop {
            if i == 0 {
                return digits;
            }
            i -= 1;
            if up[i] == b'9' {
                up[i] = b'0';
            } else {
                up[i] += 1;
                break;
            }
        }
        up
    };
    let chosen = String::from_utf8(chosen).unwrap_or_default();
    // Only if it reads back as the same double.
    let text = format!("{}.{}e{}", &chosen[..1], &chosen[1..], exp);
    if text.parse::<f64>().ok() == Some(f.abs()) {
        chosen
    } else {
        digits
    }
}

/// The power of ten of the last non-zero digit of a non-zero, finite,
/// non-integral double's exact decimal expansion; `None` for other values.
///
/// The double is `m * 2^q` with `m` odd; for `q < 0` that is
/// `m * 5^-q / 10^-q`, and `m * 5^-q` is odd, so its last digit is not zero:
/// the expansion ends exactly at `10^q`.
fn last_digit_exponent(f: f64) -> Option<i32> {
    let bits = f.to_bits();
    let raw_exp = ((bits >> 52) & 0x7FF) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    let (mantissa, exp) = match raw_exp {
        0x7FF => return None,
        // Subnormal: no implicit leading one.
        0 => (fraction, -1074),
        _ => (fraction | (1u64 << 52), raw_exp - 1075),
    };
    if mantissa == 0 {
        return None;
    }
    let q = exp + mantissa.trailing_zeros() as i32;
    (q < 0).then_some(q)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_u_escape(unit: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xF) as usize]);
    }
}

/// An object's members, already in canonical order, as `{"k":v,...}`.
fn write_members<'v, 'a: 'v>(
    members: impl Iterator<Item = &'v (Cow<'a, str>, Value<'a>)>,
    mode: Mode,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, mode, out);
        out.push(b':');
        v.write(mode, out);
    }
    out.push(b'}');
}

fn write_string(s: &str, mode: Mode, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Copy runs of bytes that need no escaping in one go.
    let plain = |b: u8| match mode {
        Mode::Ascii => (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\',
        Mode::Utf8 => b >= 0x20 && b != b'"' && b != b'\\',
    };
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if plain(b) {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        if b < 0x80 {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0C => out.extend_from_slice(b"\\f"),
                _ => push_u_escape(u32::from(b), out),
            }
            i += 1;
        } else {
            // Only reached in ASCII mode: escape the whole character.
            let ch = s[i..].chars().next().unwrap_or('\u{FFFD}');
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                push_u_escape(u32::from(*unit), out);
            }
            i += ch.len_utf8();
        }
        run = i;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str, mode: Mode) -> String {
        String::from_utf8(canonicalize(s.as_bytes(), mode).unwrap()).unwrap()
    }

    fn ascii(s: &str) -> String {
        canon(s, Mode::Ascii)
    }

    #[test]
    fn keys_sort_by_code_point_not_utf16_or_number() {
        assert_eq!(
            ascii(r#"{"b":1,"a":2,"10":3,"9":4,"é":5,"😀":6,"\uffff":7,"":8}"#),
            r#"{"":8,"10":3,"9":4,"a":2,"b":1,"\u00e9":5,"\uffff":7,"\ud83d\ude00":6}"#
        );
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        assert_eq!(ascii(r#"{"a":1,"b":2,"a":3}"#), r#"{"a":3,"b":2}"#);
        assert_eq!(ascii(r#"{"a":1,"a":2,"a":3}"#), r#"{"a":3}"#);
    }

    #[test]
    fn integers_keep_exact_digits() {
        assert_eq!(ascii("12345678901234567890"), "12345678901234567890");
        assert_eq!(ascii("-9007199254740993"), "-9007199254740993");
        assert_eq!(ascii("-0"), "0");
        assert_eq!(ascii("[0,-1,1]"), "[0,-1,1]");
    }

    #[test]
    fn integral_floats_become_exact_integers() {
        assert_eq!(ascii("100.0"), "100");
        assert_eq!(ascii("-0.0"), "0");
        assert_eq!(ascii("1e16"), "10000000000000000");
        assert_eq!(ascii("1E2"), "100");
        assert_eq!(ascii("9007199254740993.0"), "9007199254740992");
        let big = ascii("1.5e300");
        assert_eq!(big.len(), 301);
        assert!(big.starts_with("15000000000000000787571403828066"));
        assert_eq!(ascii("-1.7976931348623157e308").len(), 310);
        assert_eq!(ascii("1e-400"), "0");
    }

    #[test]
    fn other_floats_follow_python_repr() {
        assert_eq!(ascii("0.30000000000000004"), "0.30000000000000004");
        assert_eq!(ascii("0.1"), "0.1");
        assert_eq!(ascii("123456789.123"), "123456789.123");
        assert_eq!(ascii("0.0001"), "0.0001");
        assert_eq!(ascii("0.00001"), "1e-05");
        assert_eq!(ascii("1.234e-7"), "1.234e-07");
        assert_eq!(ascii("5e-324"), "5e-324");
        assert_eq!(ascii("-2.5"), "-2.5");
        assert_eq!(ascii("91.30"), "91.3");
        assert_eq!(ascii("1.5e-100"), "1.5e-100");
        // Exactly halfway between two shortest candidates: Python picks the
        // even digit (found by the oracle test).
        assert_eq!(ascii("1801255537148536.3"), "1801255537148536.2");
        assert_eq!(ascii("1801255537148536.2"), "1801255537148536.2");
        assert_eq!(ascii("-1743189479455964.3"), "-1743189479455964.2");
    }

    #[test]
    fn write_without_drops_only_that_top_level_member() {
        let v = Value::parse(br#"{"b":1,"a":{"id":2},"id":3,"c":[4.50]}"#).unwrap();
        let mut out = Vec::new();
        v.write_without("id", Mode::Utf8, &mut out);
        assert_eq!(out, br#"{"a":{"id":2},"b":1,"c":[4.5]}"#);
        let mut removed = v.clone();
        if let Value::Object(members) = &mut removed {
            members.retain(|(k, _)| k != "b");
        }
        out.clear();
        v.write_without("b", Mode::Ascii, &mut out);
        assert_eq!(out, removed.to_canonical(Mode::Ascii));
        out.clear();
        Value::parse(b"[1]")
            .unwrap()
            .write_without("id", Mode::Utf8, &mut out);
        assert_eq!(out, b"[1]");
    }

    #[test]
    fn last_digit_exponent_is_exact() {
        assert_eq!(last_digit_exponent(0.5), Some(-1));
        assert_eq!(last_digit_exponent(97.25), Some(-2));
        assert_eq!(last_digit_exponent(-0.375), Some(-3));
        // 0.1 is not 1/10 in binary: its expansion has 55 digits after the point.
        assert_eq!(last_digit_exponent(0.1), Some(-55));
        assert_eq!(last_digit_exponent(5e-324), Some(-1074));
        assert_eq!(last_digit_exponent(3.0), None);
        assert_eq!(last_digit_exponent(0.0), None);
        assert_eq!(last_digit_exponent(f64::INFINITY), None);
    }

    #[test]
    fn strings_escape_per_mode() {
        let input = r#"["a\tb\nc\u0001\"q\"\\/","\u007f","ok 😀 \u2028 end","\u00e9"]"#;
        assert_eq!(
            ascii(input),
            r#"["a\tb\nc\u0001\"q\"\\/","\u007f","ok \ud83d\ude00 \u2028 end","\u00e9"]"#
        );
        assert_eq!(
            canon(input, Mode::Utf8),
            "[\"a\\tb\\nc\\u0001\\\"q\\\"\\\\/\",\"\u{7f}\",\"ok 😀 \u{2028} end\",\"é\"]"
        );
        assert_eq!(ascii(r#""\b\f\r""#), r#""\b\f\r""#);
    }

    #[test]
    fn whitespace_is_removed() {
        assert_eq!(
            ascii(" {\n \"a\" : [ 1 , 2 ] ,\t\"b\":{} }\r\n"),
            r#"{"a":[1,2],"b":{}}"#
        );
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let err = |s: &[u8]| canonicalize(s, Mode::Ascii).unwrap_err();
        assert!(matches!(
            err(b"\xff\"a\""),
            CanonicalError::InvalidUtf8 { .. }
        ));
        assert!(matches!(
            err(br#""\ud800""#),
            CanonicalError::LoneSurrogate { .. }
        ));
        assert!(matches!(
            err(br#""\udc00x""#),
            CanonicalError::LoneSurrogate { .. }
        ));
        assert!(matches!(
            err(br#""\ud800\u0041""#),
            CanonicalError::LoneSurrogate { .. }
        ));
        assert!(matches!(err(b"NaN"), CanonicalError::NonFinite { .. }));
        assert!(matches!(
            err(b"[Infinity]"),
            CanonicalError::NonFinite { .. }
        ));
        assert!(matches!(
            err(b"-Infinity"),
            CanonicalError::NonFinite { .. }
        ));
        assert!(matches!(
            err(b"1e400"),
            CanonicalError::NumberOutOfRange { .. }
        ));
        assert!(matches!(
            err(b"{} x"),
            CanonicalError::TrailingData { offset: 3 }
        ));
        assert!(matches!(err(b"{}{}"), CanonicalError::TrailingData { .. }));
        assert!(matches!(err(b"{\"a\":1"), CanonicalError::UnexpectedEnd));
        assert!(matches!(err(b""), CanonicalError::UnexpectedEnd));
        assert!(matches!(err(b"01"), CanonicalError::TrailingData { .. }));
        assert!(matches!(err(b"1."), CanonicalError::Syntax { .. }));
        assert!(matches!(
            err(b"\"a\x01\""),
            CanonicalError::ControlCharacter { .. }
        ));
        assert!(matches!(
            err(b"\"\\x\""),
            CanonicalError::InvalidEscape { .. }
        ));
        assert!(matches!(err(b"[1,]"), CanonicalError::Syntax { .. }));
        assert!(matches!(err(b"{\"a\" 1}"), CanonicalError::Syntax { .. }));
        assert!(matches!(err(b"tru"), CanonicalError::UnexpectedEnd));
    }

    #[test]
    fn error_messages_do_not_echo_the_input() {
        let e = canonicalize(b"{\"name\":\"J\xc3\xbcrgen\" garbage}", Mode::Ascii).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains("rgen") && !msg.contains("garbage"), "{msg}");
    }

    #[test]
    fn nesting_is_capped_without_overflowing_the_stack() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(canonicalize(ok.as_bytes(), Mode::Ascii).is_ok());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(matches!(
            canonicalize(deep.as_bytes(), Mode::Ascii),
            Err(CanonicalError::TooDeep {
                limit: MAX_DEPTH,
                ..
            })
        ));
        let hostile = "{\"a\":".repeat(100_000);
        assert!(matches!(
            canonicalize(hostile.as_bytes(), Mode::Ascii),
            Err(CanonicalError::TooDeep { .. })
        ));
    }

    #[test]
    fn set_keeps_members_sorted() {
        let mut v = Value::parse(br#"{"b":1,"timestamp":5,"z":2}"#).unwrap();
        v.set("timestamp", Value::Number(Cow::Owned("1774970000".into())));
        v.set("a", Value::Null);
        assert_eq!(
            String::from_utf8(v.to_canonical(Mode::Ascii)).unwrap(),
            r#"{"a":null,"b":1,"timestamp":1774970000,"z":2}"#
        );
        assert_eq!(v.get("timestamp").unwrap().simple_text(), "1774970000");
    }
}
