//! The count-only answer (`SandboxConfig::count_only`): a JSON events request is read only far
//! enough to count its `data` entries and find its `access_token`, without building the events
//! or checking them. Benchmarks use it to measure the sender with an endpoint that costs next
//! to nothing; everything else goes through the full validation.

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// What a count-only read takes from a body: the number of `data` entries (None when the
/// body has no `data` array) and the body's access token.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Counted {
    pub events: Option<usize>,
    pub access_token: Option<String>,
}

/// Reads a JSON body as a count-only answer needs it; `None` when it is not a JSON object.
pub(crate) fn count(body: &[u8]) -> Option<Counted> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let counted = (&mut de).deserialize_map(BodyVisitor).ok()?;
    de.end().ok()?;
    Some(counted)
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Counted;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counted, A::Error> {
        let mut out = Counted::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "data" => out.events = map.next_value::<DataCount>()?.0,
                "access_token" => out.access_token = map.next_value::<Option<String>>()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// The length of an array, its entries skipped unread; None for any other value.
struct DataCount(Option<usize>);

impl<'de> serde::Deserialize<'de> for DataCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DataCount;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DataCount, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(DataCount(Some(n)))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DataCount, A::Error> {
                IgnoredAny.visit_map(map).map(|_| DataCount(None))
            }

            fn visit_str<E>(self, _: &str) -> Result<DataCount, E> {
                Ok(DataCount(None))
            }

            fn visit_bool<E>(self, _: bool) -> Result<DataCount, E> {
                Ok(DataCount(None))
            }

            fn visit_i64<E>(self, _: i64) -> Result<DataCount, E> {
                Ok(DataCount(None))
            }

            fn visit_u64<E>(self, _: u64) -> Result<DataCount, E> {
                Ok(DataCount(None))
            }

            fn visit_f64<E>(self, _: f64) -> Result<DataCount, E> {
                Ok(DataCount(None))
            }

            fn visit_unit<E>(self) -> Result<DataCount, E> {
                Ok(DataCount(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_data_entries_and_finds_the_token() {
        let body = br#"{"data":[{"event_name":"Lead","user_data":{"em":["a"]}},{"x":[1,2,{"y":null}]},3],"access_token":"tok","test_event_code":"T1"}"#;
        assert_eq!(
            count(body),
            Some(Counted {
                events: Some(3),
                access_token: Some("tok".into())
            })
        );
    }

    #[test]
    fn a_body_without_a_data_array_counts_none() {
        assert_eq!(count(br#"{"data":"[]"}"#).unwrap().events, None);
        assert_eq!(count(br#"{"access_token":"t"}"#).unwrap().events, None);
        assert_eq!(count(br#"{"data":{"a":1}}"#).unwrap().events, None);
    }

    #[test]
    fn anything_but_one_json_object_is_refused() {
        assert_eq!(count(b"[1,2]"), None);
        assert_eq!(count(br#"{"data":[1]"#), None);
        assert_eq!(count(br#"{"data":[1]} {}"#), None);
    }
}
