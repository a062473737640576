//! JSON payloads kept as validated text, so that reading and forwarding an event never
//! re-parses or re-formats its data.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// A JSON document, stored as the exact text it was created from. Construction validates it.
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// # Errors
    /// [`Error::InvalidInput`] when `text` is not one valid JSON value.
    pub fn from_json_str(text: impl Into<String>) -> Result<Self> {
        RawValue::from_string(text.into())
            .map(Self)
            .map_err(|e| Error::invalid(format!("payload is not valid JSON: {e}")))
    }

    /// Serializes `value` to JSON.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `value` cannot be serialized (e.g. a map with non-string keys).
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        serde_json::value::to_raw_value(value)
            .map(Self)
            .map_err(|e| Error::invalid(format!("payload cannot be serialized to JSON: {e}")))
    }

    /// The JSON `null`.
    pub fn null() -> Self {
        Self::from_json_str("null").unwrap_or_else(|_| unreachable!("null is valid JSON"))
    }

    /// Decodes the payload into `T`.
    ///
    /// # Errors
    /// [`Error::Decode`] when the JSON does not have the shape of `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.0.get()).map_err(|e| Error::decode("payload", e))
    }

    /// The payload as a generic JSON value, for inspection (tests, tools). `Null` if the
    /// document nests deeper than serde_json's recursion limit; code that must not lose data
    /// uses [`Payload::decode`] instead.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(Self)
    }
}

impl TryFrom<serde_json::Value> for Payload {
    type Error = Error;
    fn try_from(v: serde_json::Value) -> Result<Self> {
        Self::from_value(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_exact_text_and_rejects_invalid_json() {
        let p = Payload::from_json_str(r#"{ "a" : 1 }"#).unwrap();
        assert_eq!(p.as_str(), r#"{ "a" : 1 }"#);
        assert!(matches!(
            Payload::from_json_str("{not json"),
            Err(Error::InvalidInput { .. })
        ));
        assert!(Payload::from_json_str("").is_err());
        assert!(Payload::from_json_str("1 2").is_err());
    }

    #[test]
    fn decodes_into_typed_values() {
        #[derive(Deserialize, Serialize, PartialEq, Debug)]
        struct P {
            a: i64,
        }
        let p = Payload::from_value(&P { a: 7 }).unwrap();
        assert_eq!(p.decode::<P>().unwrap(), P { a: 7 });
        assert!(matches!(p.decode::<Vec<u8>>(), Err(Error::Decode { .. })));
    }
}
