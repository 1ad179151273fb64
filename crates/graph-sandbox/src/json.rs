//! A borrowed JSON value for the hot path.
//!
//! `serde_json::Value` allocates a `String` per key and string and a `BTreeMap` per object;
//! at ~200,000 events/s that dominates. [`Jv`] borrows keys and strings from the request body
//! when they hold no escapes, keeps objects as vectors of pairs in the order received, and keeps
//! integers exact (`u64`/`i64`, so a 17-digit `lead_id` never goes through a float). It is
//! parsed once by serde_json, validated, and written back compact to the record file.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum Jv<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Jv<'a>>),
    Obj(Object<'a>),
}

/// Object members in the order received. Lookups take the last duplicate, as serde_json does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object<'a>(pub Vec<(Cow<'a, str>, Jv<'a>)>);

impl<'a> Object<'a> {
    pub fn get(&self, key: &str) -> Option<&Jv<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Jv<'a>)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    fn into_owned(self) -> Object<'static> {
        Object(
            self.0
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                .collect(),
        )
    }
}

impl<'a> Jv<'a> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Jv::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Jv::Obj(o) => Some(o),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Jv<'a>]> {
        match self {
            Jv::Arr(a) => Some(a),
            _ => None,
        }
    }
    /// An exact integer that fits `u64` (floats never qualify).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Jv::U64(n) => Some(n),
            Jv::I64(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }
    /// An exact integer that fits `i64` (floats never qualify).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Jv::U64(n) => i64::try_from(n).ok(),
            Jv::I64(n) => Some(n),
            _ => None,
        }
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Jv::Null)
    }
    pub fn is_boolean(&self) -> bool {
        matches!(self, Jv::Bool(_))
    }
    pub fn is_number(&self) -> bool {
        matches!(self, Jv::U64(_) | Jv::I64(_) | Jv::F64(_))
    }
    pub fn is_integer(&self) -> bool {
        matches!(self, Jv::U64(_) | Jv::I64(_))
    }
    pub fn is_string(&self) -> bool {
        matches!(self, Jv::Str(_))
    }
    pub fn is_object(&self) -> bool {
        matches!(self, Jv::Obj(_))
    }
    pub fn is_array(&self) -> bool {
        matches!(self, Jv::Arr(_))
    }

    /// Detaches the value from the buffer it borrows from.
    pub fn into_owned(self) -> Jv<'static> {
        match self {
            Jv::Null => Jv::Null,
            Jv::Bool(b) => Jv::Bool(b),
            Jv::U64(n) => Jv::U64(n),
            Jv::I64(n) => Jv::I64(n),
            Jv::F64(n) => Jv::F64(n),
            Jv::Str(s) => Jv::Str(Cow::Owned(s.into_owned())),
            Jv::Arr(a) => Jv::Arr(a.into_iter().map(Jv::into_owned).collect()),
            Jv::Obj(o) => Jv::Obj(o.into_owned()),
        }
    }

    /// The same value as a `serde_json::Value` (keys sorted, as `Value` keeps them).
    pub fn to_value(&self) -> Value {
        match self {
            Jv::Null => Value::Null,
            Jv::Bool(b) => Value::Bool(*b),
            Jv::U64(n) => Value::from(*n),
            Jv::I64(n) => Value::from(*n),
            Jv::F64(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
            Jv::Str(s) => Value::String(s.to_string()),
            Jv::Arr(a) => Value::Array(a.iter().map(Jv::to_value).collect()),
            Jv::Obj(o) => Value::Object(
                o.0.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// Parses a JSON document, borrowing from `text` where possible.
pub fn parse(text: &[u8]) -> Result<Jv<'_>, serde_json::Error> {
    serde_json::from_slice(text)
}

/// Parses a JSON document from a `&str`, borrowing from it where possible.
pub fn parse_str(text: &str) -> Result<Jv<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

struct JvVisitor;

impl<'de> Visitor<'de> for JvVisitor {
    type Value = Jv<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Jv<'de>, E> {
        Ok(Jv::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Jv<'de>, E> {
        Ok(Jv::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Jv<'de>, E> {
        Ok(Jv::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Jv<'de>, E> {
        Ok(Jv::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Jv<'de>, E> {
        Ok(Jv::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Jv<'de>, E> {
        Ok(Jv::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Jv<'de>, E> {
        Ok(Jv::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Jv<'de>, E> {
        Ok(Jv::Null)
    }
    fn visit_none<E>(self) -> Result<Jv<'de>, E> {
        Ok(Jv::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Jv<'de>, D::Error> {
        Deserialize::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Jv<'de>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Jv::Arr(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Jv<'de>, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(k) = map.next_key::<Key<'de>>()? {
            let v: Jv<'de> = map.next_value()?;
            out.push((k.0, v));
        }
        Ok(Jv::Obj(Object(out)))
    }
}

impl<'de> Deserialize<'de> for Jv<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JvVisitor)
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl Serialize for Jv<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Jv::Null => s.serialize_unit(),
            Jv::Bool(b) => s.serialize_bool(*b),
            Jv::U64(n) => s.serialize_u64(*n),
            Jv::I64(n) => s.serialize_i64(*n),
            Jv::F64(n) => s.serialize_f64(*n),
            Jv::Str(v) => s.serialize_str(v),
            Jv::Arr(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Jv::Obj(o) => {
                let mut map = s.serialize_map(Some(o.0.len()))?;
                for (k, v) in &o.0 {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_compact_in_order_with_exact_integers() {
        let text = r#"{ "b": 98765432109876543, "a": [1, -2, 1.5, "x\"y", null, true], "c": {} }"#;
        let v = parse(text.as_bytes()).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"b":98765432109876543,"a":[1,-2,1.5,"x\"y",null,true],"c":{}}"#
        );
        let o = v.as_object().unwrap();
        assert_eq!(o.get("b").unwrap().as_u64(), Some(98_765_432_109_876_543));
        assert!(matches!(
            o.get("a").unwrap().as_array().unwrap()[3],
            Jv::Str(Cow::Owned(_))
        ));
        assert_eq!(v.to_value(), serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn borrows_unescaped_strings() {
        let text = br#"{"key":"value"}"#;
        let v = parse(text).unwrap();
        let o = v.as_object().unwrap();
        assert!(matches!(
            &o.0[0],
            (Cow::Borrowed(_), Jv::Str(Cow::Borrowed(_)))
        ));
    }
}
