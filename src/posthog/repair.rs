//! What PostHog's answers may hold that JSON in Rust cannot: bytes that are not UTF-8, and
//! escaped lone surrogates (`\ud800`) in the JSON text PostHog keeps `properties` as. One such
//! event must never block a backfill: bytes that are not UTF-8 are replaced by U+FFFD (and the
//! event named; `rows.rs` does that as an answer arrives), and a lone surrogate escape is kept as the escape PostHog sent.

/// Decodes a JSON string literal (with its quotes) whose content is JSON text, as PostHog
/// sends `properties`. Unlike serde_json, an escaped lone surrogate is kept as the six
/// characters of its escape, so that the text decoded is still the JSON PostHog stored.
pub(crate) fn json_text_of_string(literal: &str) -> Result<String, String> {
    if let Ok(text) = serde_json::from_str::<String>(literal) {
        return Ok(text);
    }
    let inner = literal
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or("not a JSON string")?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next().ok_or("a string ends inside an escape")? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let unit = hex4(&mut chars)?;
                if (0xD800..0xDC00).contains(&unit) {
                    // A high surrogate: with a low one after it, one character.
                    let rest = chars.as_str();
                    if let Some(low) = rest
                        .strip_prefix("\\u")
                        .and_then(|r| r.get(..4))
                        .and_then(|h| u16::from_str_radix(h, 16).ok())
                        .filter(|l| (0xDC00..0xE000).contains(l))
                    {
                        let code = 0x10000
                            + ((u32::from(unit) - 0xD800) << 10)
                            + (u32::from(low) - 0xDC00);
                        out.push(char::from_u32(code).ok_or("a bad surrogate pair")?);
                        chars = rest[6..].chars();
                        continue;
                    }
                }
                match char::from_u32(u32::from(unit)) {
                    Some(c) => out.push(c),
                    // A lone surrogate: keep its escape, valid in the JSON text it stands in.
                    None => out.push_str(&format!("\\u{unit:04x}")),
                }
            }
            other => return Err(format!("an unknown escape \\{other}")),
        }
    }
    Ok(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Result<u16, String> {
    let hex: String = chars.by_ref().take(4).collect();
    if hex.len() != 4 {
        return Err("a \\u escape with fewer than 4 digits".into());
    }
    u16::from_str_radix(&hex, 16).map_err(|_| format!("a bad \\u escape {hex:?}"))
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
