//! Query-string and path decoding with form-urlencoded semantics: each value is decoded exactly
//! once, `+` is a space (so a literal `+` must be sent as `%2B`), and malformed escapes or
//! invalid UTF-8 are errors rather than silently repaired.

/// Why a query could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    BadEscape,
    /// Decoded bytes are not UTF-8.
    #[error("query is not valid UTF-8")]
    NotUtf8,
}

/// The query as an ordered list of decoded `(name, value)` pairs.
pub fn parse(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k, true)?, decode(v, true)?))
        })
        .collect()
}

/// Percent-decodes `s` once; `plus_is_space` selects form semantics.
pub fn decode(s: &str, plus_is_space: bool) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(QueryError::BadEscape)?;
                // Not `u8::from_str_radix` alone: it accepts a sign, so `%+1` would decode.
                let digit = |b: u8| char::from(b).to_digit(16).ok_or(QueryError::BadEscape);
                out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

/// Parses a boolean flag case-insensitively: `true`/`1`/`false`/`0`.
pub fn flag(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_once_with_form_semantics() {
        let pairs = |q: &str| {
            parse(q).map(|v| {
                v.into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            pairs("name=%2Fa%2Fb&x"),
            Ok(vec!["name=/a/b".into(), "x=".into()])
        );
        assert_eq!(pairs("id=a+b%2Bc"), Ok(vec!["id=a b+c".into()]));
        assert_eq!(pairs("id=%252F"), Ok(vec!["id=%2F".into()]));
        assert_eq!(pairs("&&a=1&&"), Ok(vec!["a=1".into()]));
        assert_eq!(parse("id=%"), Err(QueryError::BadEscape));
        assert_eq!(parse("id=%G1"), Err(QueryError::BadEscape));
        assert_eq!(parse("id=%+1"), Err(QueryError::BadEscape));
        assert_eq!(parse("id=%FF"), Err(QueryError::NotUtf8));
        assert_eq!(decode("a+b", false), Ok("a+b".into()));
    }

    #[test]
    fn flags_are_case_insensitive() {
        assert_eq!(flag("TRUE"), Some(true));
        assert_eq!(flag("0"), Some(false));
        assert_eq!(flag("yes"), None);
    }
}
