//! What PostHog's answers may hold that JSON in Rust cannot: bytes that are not UTF-8, and
//! escaped lone surrogates (`\ud800`) in the JSON text PostHog keeps `properties` as. One such
//! event must never block a backfill: bytes that are not UTF-8 are replaced by U+FFFD (and the
//! event named; `rows.rs` does that as an answer arrives), and a lone surrogate escape is kept
//! as the escape PostHog sent.

use serde::Deserialize;
use std::borrow::Cow;

/// `properties` as PostHog sends it: JSON text inside a JSON string, unescaped by serde_json
/// in the same pass that finds the string's end (`deserialize_bytes`, which lets escaped lone
/// surrogates through as WTF-8 instead of failing the row).
pub(crate) struct Escaped<'a>(pub(crate) Cow<'a, [u8]>);

impl<'de: 'a, 'a> Deserialize<'de> for Escaped<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Text<'a> {
            type Value = Cow<'a, [u8]>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON text in a string")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_vec()))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v.as_bytes()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.as_bytes().to_vec()))
            }
        }
        d.deserialize_bytes(Text(std::marker::PhantomData))
            .map(Escaped)
    }
}

/// `properties` as a row carries it: JSON text in a string (PostHog's way), or the object
/// itself (as a proxy, a fork or another server version may send it), kept byte for byte.
pub(crate) enum Properties<'a> {
    Text(Escaped<'a>),
    Object(&'a str),
}

impl<'de: 'a, 'a> Deserialize<'de> for Properties<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Taken whole first (no number or nesting is parsed, so 2^70, 1e400 and deep objects
        // stay as sent), then read by its first byte.
        let raw: &'de serde_json::value::RawValue = Deserialize::deserialize(d)?;
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<Escaped<'de>>(text)
                .map(Properties::Text)
                .map_err(D::Error::custom),
            Some(b'{') => Ok(Properties::Object(text)),
            _ => Err(D::Error::custom(format!(
                "properties are neither JSON text in a string nor an object: {}",
                crate::net::http::redacted_excerpt(text.as_bytes(), 80)
            ))),
        }
    }
}

impl<'a> Properties<'a> {
    /// The properties' JSON text, byte for byte as received or as PostHog stored it.
    pub(crate) fn text(self) -> Result<Cow<'a, str>, String> {
        match self {
            Properties::Text(escaped) => escaped.text(),
            Properties::Object(text) => Ok(Cow::Borrowed(text)),
        }
    }
}

impl<'a> Escaped<'a> {
    /// The JSON text PostHog stored. An escaped lone surrogate (which serde_json hands over as
    /// WTF-8) is written back as the six characters of its escape, so that the text is still
    /// the JSON PostHog stored; anything else that is not UTF-8 is an error.
    pub(crate) fn text(self) -> Result<Cow<'a, str>, String> {
        let bytes = match self.0 {
            Cow::Borrowed(b) => match std::str::from_utf8(b) {
                Ok(text) => return Ok(Cow::Borrowed(text)),
                Err(_) => b.to_vec(),
            },
            Cow::Owned(v) => match String::from_utf8(v) {
                Ok(text) => return Ok(Cow::Owned(text)),
                Err(e) => e.into_bytes(),
            },
        };
        let mut out = String::with_capacity(bytes.len() + 16);
        let mut rest = &bytes[..];
        loop {
            let (valid, bad) = match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    return Ok(Cow::Owned(out));
                }
                Err(e) => rest.split_at(e.valid_up_to()),
            };
            out.push_str(std::str::from_utf8(valid).map_err(|e| e.to_string())?);
            // WTF-8 of a surrogate U+D800-U+DFFF: ED A0-BF 80-BF.
            let [0xED, b1 @ 0xA0..=0xBF, b2 @ 0x80..=0xBF, ..] = *bad else {
                return Err("bytes that are neither UTF-8 nor an escaped surrogate".into());
            };
            let unit = 0xD000 | (u16::from(b1 & 0x3F) << 6) | u16::from(b2 & 0x3F);
            out.push_str(&format!("\\u{unit:04x}"));
            rest = &bad[3..];
        }
    }
}

/// Decodes a JSON string literal (with its quotes) whose content is JSON text, as
/// [`Escaped::text`] does for a row's `properties`.
#[cfg(test)]
pub(crate) fn json_text_of_string(literal: &str) -> Result<String, String> {
    let escaped: Escaped<'_> = serde_json::from_str(literal).map_err(|e| e.to_string())?;
    escaped.text().map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_surrogate_escape_is_kept_as_its_escape() {
        let literal = r#""{\"a\":\"\ud800 x\",\"b\":\"\ud83d\ude00\",\"c\":\"\"}""#;
        let text = json_text_of_string(literal).unwrap();
        assert_eq!(text, r#"{"a":"\ud800 x","b":"😀","c":""}"#);
        // ... and the result is JSON text serde accepts as it is.
        assert!(serde_json::value::RawValue::from_string(text).is_ok());
        // The common case takes serde's path.
        assert_eq!(json_text_of_string(r#""{\"a\":1}""#).unwrap(), r#"{"a":1}"#);
        assert!(json_text_of_string(r#""\u12""#).is_err());
        assert!(json_text_of_string(r#""\q""#).is_err());
    }
}
