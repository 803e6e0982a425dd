//! Lenient conversion between JSON values and the typed payload model.
//!
//! Every typed struct of the model is read from a JSON object by taking its
//! known keys out one by one. A value that converts becomes the typed field;
//! a value that does not (null, an empty array, a type Didit did not use to
//! send) is put back and so ends up in the struct's `extra` map, untouched.
//! That one rule gives the two properties the model promises:
//!
//! - a real delivery is never rejected because one field has an unexpected
//!   shape (the typed field is simply empty and decisioning sees "unknown");
//! - nothing is lost: writing the struct back out starts from `extra` and
//!   adds the typed fields, so a v3 body survives a parse/serialise round
//!   trip key for key, nulls and empty arrays included.
//!
//! Numbers sent as strings (`"73.5"`), integers sent as floats (`37.0`) and
//! booleans sent as `"true"` or `0`/`1` are accepted, and written back in
//! their normal form.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

/// A value of the model that can be read from, and written to, one JSON
/// value.
pub(crate) trait FromToJson: Sized {
    /// Converts `value`, or hands it back unchanged when it has no typed
    /// meaning here, so that the caller can keep it verbatim.
    fn from_json(value: Value) -> Result<Self, Value>;

    /// The JSON form of the value.
    fn to_json(&self) -> Value;
}

/// A field of a model struct: `Option<T>`, `Vec<T>` or a map. `Default` is
/// the value of a field whose key is absent.
pub(crate) trait Field: Sized + Default {
    /// Converts the value found under the field's key, or hands it back.
    fn take(value: Value) -> Result<Self, Value>;

    /// The JSON to write under the field's key, or `None` to write nothing.
    fn put(&self) -> Option<Value>;
}

impl<T: FromToJson> Field for Option<T> {
    fn take(value: Value) -> Result<Self, Value> {
        // Null carries no typed meaning; keeping it in `extra` keeps the
        // difference between an absent key and an explicit null.
        if value.is_null() {
            return Err(value);
        }
        T::from_json(value).map(Some)
    }

    fn put(&self) -> Option<Value> {
        self.as_ref().map(FromToJson::to_json)
    }
}

impl<T: FromToJson> Field for Vec<T> {
    fn take(value: Value) -> Result<Self, Value> {
        let items = match value {
            // An empty array is kept verbatim so that `[]` and an absent key
            // both survive a round trip.
            Value::Array(items) if !items.is_empty() => items,
            other => return Err(other),
        };
        let mut out = Vec::with_capacity(items.len());
        let mut rest = items.into_iter();
        while let Some(item) = rest.next() {
            match T::from_json(item) {
                Ok(typed) => out.push(typed),
                Err(bad) => {
                    // One item of an unexpected shape: keep the whole array
                    // as it was rather than a typed subset of it.
                    let mut back: Vec<Value> = out.iter().map(FromToJson::to_json).collect();
                    back.push(bad);
                    back.extend(rest);
                    return Err(Value::Array(back));
                }
            }
        }
        Ok(out)
    }

    fn put(&self) -> Option<Value> {
        if self.is_empty() {
            None
        } else {
            Some(Value::Array(self.iter().map(FromToJson::to_json).collect()))
        }
    }
}

impl Field for BTreeMap<String, String> {
    fn take(value: Value) -> Result<Self, Value> {
        match value {
            Value::Object(map) if !map.is_empty() && map.values().all(Value::is_string) => Ok(map
                .into_iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k, s)),
                    _ => None,
                })
                .collect()),
            other => Err(other),
        }
    }

    fn put(&self) -> Option<Value> {
        if self.is_empty() {
            None
        } else {
            Some(Value::Object(
                self.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ))
        }
    }
}

/// Takes `key` out of `map` as a typed field. A value that does not convert
/// is put back, so that it stays in the map the caller keeps as `extra`.
pub(crate) fn take<F: Field>(map: &mut Map<String, Value>, key: &str) -> F {
    match map.remove(key) {
        None => F::default(),
        Some(value) => match F::take(value) {
            Ok(typed) => typed,
            Err(kept) => {
                map.insert(key.to_owned(), kept);
                F::default()
            }
        },
    }
}

/// Writes a typed field under `key`, replacing whatever `extra` held there:
/// the typed value is the one a caller may have changed.
pub(crate) fn put<F: Field>(map: &mut Map<String, Value>, key: &str, field: &F) {
    if let Some(value) = field.put() {
        map.insert(key.to_owned(), value);
    }
}

impl FromToJson for String {
    fn from_json(value: Value) -> Result<Self, Value> {
        match value {
            Value::String(s) => Ok(s),
            // A document or phone number sent as a JSON number is still the
            // number; its decimal text is what decisioning compares.
            Value::Number(n) => Ok(n.to_string()),
            other => Err(other),
        }
    }

    fn to_json(&self) -> Value {
        Value::String(self.clone())
    }
}

impl FromToJson for f64 {
    fn from_json(value: Value) -> Result<Self, Value> {
        let parsed = match &value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err(value),
        }
    }

    fn to_json(&self) -> Value {
        float_to_json(*self)
    }
}

/// Writes a float the way Didit does: an integral value as an integer
/// (`100`, not `100.0`), so that a score Didit sent as `100` is written back
/// as `100`.
pub(crate) fn float_to_json(x: f64) -> Value {
    // Below 2^53 every integral f64 is exactly an i64, and the cast is exact.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if x.fract() == 0.0 && x.abs() < EXACT {
        Value::Number(Number::from(x as i64))
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

impl FromToJson for i64 {
    fn from_json(value: Value) -> Result<Self, Value> {
        let parsed = match &value {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(integral)),
            Value::String(s) => {
                let s = s.trim();
                s.parse::<i64>()
                    .ok()
                    .or_else(|| s.parse::<f64>().ok().and_then(integral))
            }
            _ => None,
        };
        parsed.ok_or(value)
    }

    fn to_json(&self) -> Value {
        Value::Number(Number::from(*self))
    }
}

/// `x` as an i64 when it is integral and within range.
fn integral(x: f64) -> Option<i64> {
    // i64::MAX as f64 rounds up to 2^63, so the upper bound is exclusive.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if x.fract() == 0.0 && (-LIMIT..LIMIT).contains(&x) {
        Some(x as i64)
    } else {
        None
    }
}

impl FromToJson for bool {
    fn from_json(value: Value) -> Result<Self, Value> {
        let parsed = match &value {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            Value::Number(n) => match n.as_i64() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            },
            _ => None,
        };
        parsed.ok_or(value)
    }

    fn to_json(&self) -> Value {
        Value::Bool(*self)
    }
}

impl FromToJson for Value {
    fn from_json(value: Value) -> Result<Self, Value> {
        Ok(value)
    }

    fn to_json(&self) -> Value {
        self.clone()
    }
}

/// Defines a model struct read leniently from a JSON object: each field is
/// `pub name: Type = "json_key"`, and the struct gets an `extra` map, serde
/// impls, and `from_map`/`to_map`.
macro_rules! model {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident: $ty:ty = $key:literal,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
            /// Every other key of the object exactly as received: keys this
            /// model does not know, and known keys whose value had no typed
            /// meaning (null, an empty array, an unexpected type).
            pub extra: ::serde_json::Map<String, ::serde_json::Value>,
        }

        impl $name {
            /// Reads the struct from a JSON object; never fails, see the
            /// module documentation.
            pub fn from_map(mut map: ::serde_json::Map<String, ::serde_json::Value>) -> Self {
                $(
                    let $field = $crate::payload::json::take::<$ty>(&mut map, $key);
                )*
                Self { $($field,)* extra: map }
            }

            /// The JSON object form: `extra`, overlaid with the typed fields.
            pub fn to_map(&self) -> ::serde_json::Map<String, ::serde_json::Value> {
                #[allow(unused_mut)]
                let mut map = self.extra.clone();
                $(
                    $crate::payload::json::put(&mut map, $key, &self.$field);
                )*
                map
            }
        }

        $crate::payload::json::object_serde!($name);
    };
}

/// The serde and [`FromToJson`] impls of a type with `from_map`/`to_map`.
macro_rules! object_serde {
    ($name:ident) => {
        impl $crate::payload::json::FromToJson for $name {
            fn from_json(value: ::serde_json::Value) -> Result<Self, ::serde_json::Value> {
                match value {
                    ::serde_json::Value::Object(map) => Ok(Self::from_map(map)),
                    other => Err(other),
                }
            }

            fn to_json(&self) -> ::serde_json::Value {
                ::serde_json::Value::Object(self.to_map())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                ::serde::Serialize::serialize(&self.to_map(), serializer)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                match <::serde_json::Value as ::serde::Deserialize>::deserialize(deserializer)? {
                    ::serde_json::Value::Object(map) => Ok(Self::from_map(map)),
                    _ => Err(<D::Error as ::serde::de::Error>::custom(concat!(
                        "expected a json object for ",
                        stringify!($name)
                    ))),
                }
            }
        }
    };
}

/// Defines an enum over the exact strings Didit sends, with an `Other`
/// variant that keeps any string this version does not know, so that a
/// value Didit adds later is carried through rather than rejected.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident => $text:literal,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant,
            )*
            /// A value this version does not know, kept exactly as received.
            /// Build values with `From<&str>`, which never yields `Other` for
            /// a known string.
            Other(String),
        }

        impl $name {
            /// The exact string Didit sends.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                match text.as_str() {
                    $($text => Self::$variant,)*
                    _ => Self::Other(text),
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::convert::Infallible;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Ok(Self::from(text))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                <String as ::serde::Deserialize>::deserialize(deserializer).map(Self::from)
            }
        }

        impl $crate::payload::json::FromToJson for $name {
            fn from_json(value: ::serde_json::Value) -> Result<Self, ::serde_json::Value> {
                match value {
                    ::serde_json::Value::String(text) => Ok(Self::from(text)),
                    other => Err(other),
                }
            }

            fn to_json(&self) -> ::serde_json::Value {
                ::serde_json::Value::String(self.as_str().to_owned())
            }
        }
    };
}

pub(crate) use {model, object_serde, string_enum};

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn numbers_sent_as_strings_are_read() {
        assert_eq!(f64::from_json(json!("73.5")), Ok(73.5));
        assert_eq!(i64::from_json(json!(" 42 ")), Ok(42));
        assert_eq!(i64::from_json(json!(37.0)), Ok(37));
        assert_eq!(bool::from_json(json!("TRUE")), Ok(true));
        assert_eq!(String::from_json(json!(123456)), Ok("123456".to_owned()));
    }

    #[test]
    fn values_without_typed_meaning_are_handed_back() {
        assert_eq!(f64::from_json(json!("n/a")), Err(json!("n/a")));
        assert_eq!(f64::from_json(json!("NaN")), Err(json!("NaN")));
        assert_eq!(i64::from_json(json!(1.5)), Err(json!(1.5)));
        assert_eq!(bool::from_json(json!(2)), Err(json!(2)));
        assert_eq!(<Option<f64> as Field>::take(Value::Null), Err(Value::Null));
        assert_eq!(<Vec<String>>::take(json!([])), Err(json!([])));
        assert_eq!(<Vec<String>>::take(json!(["a", {}])), Err(json!(["a", {}])));
    }

    #[test]
    fn a_value_that_does_not_convert_stays_in_the_map() {
        let mut map = object(json!({"score": {"odd": true}, "age": "37", "gone": null}));
        let score: Option<f64> = take(&mut map, "score");
        let age: Option<i64> = take(&mut map, "age");
        let gone: Option<String> = take(&mut map, "gone");
        let absent: Option<String> = take(&mut map, "absent");
        assert_eq!((score, age, gone, absent), (None, Some(37), None, None));
        assert_eq!(
            Value::Object(map),
            json!({"score": {"odd": true}, "gone": null})
        );
    }

    #[test]
    fn integral_floats_are_written_as_integers() {
        assert_eq!(float_to_json(100.0), json!(100));
        assert_eq!(float_to_json(-0.0), json!(0));
        assert_eq!(float_to_json(95.4), json!(95.4));
        assert_eq!(float_to_json(1e300), json!(1e300));
    }
}
