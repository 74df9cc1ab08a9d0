//! Chat Completions stream pieces both directions use: a chunk's tool-call delta (read by the
//! bridge from a chat upstream, written by the wrapper to a chat client) and the lenient string
//! they are made of. One definition, so reading and writing agree on the wire shape.
//!
//! Uses: nothing else of this crate and serde.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// One tool call's piece of a `chat.completion.chunk` delta: `index`, the call's `id` and
/// `type` on its first piece, and the function's `name` and a piece of its `arguments`.
#[derive(Serialize, Deserialize)]
pub(crate) struct ToolCallDelta<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) index: Option<u64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<Text<'a>>,
    #[serde(
        rename = "type",
        borrow,
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) kind: Option<Text<'a>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) function: Option<FunctionDelta<'a>>,
}

/// The function part of a [`ToolCallDelta`].
#[derive(Serialize, Deserialize)]
pub(crate) struct FunctionDelta<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<Text<'a>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub(crate) arguments: Option<Text<'a>>,
}

/// A string that borrows from the chunk when it can. Any other JSON value reads as an empty
/// string, so that an upstream's odd extension (e.g. `reasoning` as an object) is ignored
/// instead of failing the stream.
pub(crate) struct Text<'a>(pub(crate) Cow<'a, str>);

impl<'a> Text<'a> {
    pub(crate) fn borrowed(text: &'a str) -> Self {
        Text(Cow::Borrowed(text))
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed("")))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed("")))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed("")))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed("")))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed("")))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed("")))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text(Cow::Borrowed("")))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text(Cow::Borrowed("")))
    }
}

pub(crate) fn text_of<'t>(text: &'t Option<Text<'_>>) -> &'t str {
    text.as_ref().map_or("", |t| &t.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_reads_back_what_was_written() {
        let first = ToolCallDelta {
            index: Some(0),
            id: Some(Text::borrowed("call_1")),
            kind: Some(Text::borrowed("function")),
            function: Some(FunctionDelta {
                name: Some(Text::borrowed("f")),
                arguments: Some(Text::borrowed("{\"a\":")),
            }),
        };
        let json = serde_json::to_string(&first).unwrap();
        assert_eq!(
            json,
            r#"{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":"}}"#
        );
        let back: ToolCallDelta = serde_json::from_str(&json).unwrap();
        assert_eq!(back.index, Some(0));
        assert_eq!(text_of(&back.id), "call_1");
        let function = back.function.unwrap();
        assert_eq!(text_of(&function.arguments), "{\"a\":");
        let later = r#"{"index":0,"function":{"arguments":"1}"}}"#;
        let later: ToolCallDelta = serde_json::from_str(later).unwrap();
        assert!(later.id.is_none() && later.kind.is_none());
        // An odd upstream value reads as empty text rather than failing the stream.
        let odd: ToolCallDelta = serde_json::from_str(r#"{"id":{"x":1}}"#).unwrap();
        assert_eq!(text_of(&odd.id), "");
    }
}
