//! Value parsing exactly as qubesd's Python does it: `int()`, the boolean
//! literals, `string.printable`, `ipaddress.IPv4Address`/`IPv6Address`,
//! `uuid.UUID`, VM names and tags.

use super::ApiError;

/// Python's `str.isspace()` for ASCII.
fn is_py_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' | '\x1c'..='\x1f'
    )
}

/// `int(s)` for an ASCII string: surrounding whitespace, an optional sign,
/// decimal digits with single underscores between them. Returns the
/// canonical decimal text (`-0` becomes `0`, leading zeros dropped).
pub(crate) fn parse_int(s: &str) -> Option<String> {
    let t = s.trim_matches(is_py_space);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, t.get(1..)?),
        Some(b'+') => (false, t.get(1..)?),
        _ => (false, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    if !digits.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    let trimmed = clean.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some("0".into());
    }
    Some(if neg {
        format!("-{trimmed}")
    } else {
        trimmed.to_string()
    })
}

/// The value of a canonical integer text, saturated to `i128`.
pub(crate) fn int_value(s: &str) -> i128 {
    s.parse::<i128>().unwrap_or(if s.starts_with('-') {
        i128::MIN
    } else {
        i128::MAX
    })
}

/// `qubes.property.bool` on a string.
pub(crate) fn parse_bool(s: &str) -> Result<bool, ApiError> {
    match s.to_ascii_lowercase().as_str() {
        "0" | "no" | "false" | "off" => Ok(false),
        "1" | "yes" | "true" | "on" => Ok(true),
        _ => Err(ApiError::exc(
            "QubesValueError",
            format!("Invalid literal for boolean property: {}", py_repr(s)),
        )),
    }
}

/// Python's `repr()` of a str (enough for messages).
pub(crate) fn py_repr(s: &str) -> String {
    if s.contains('\'') && !s.contains('"') {
        format!("\"{}\"", s.escape_debug())
    } else {
        format!("'{}'", s.escape_debug().to_string().replace('\'', "\\'"))
    }
}

/// Every character in Python's `string.printable`.
pub(crate) fn is_printable(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_graphic() || matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
}

/// `ipaddress.IPv4Address(s)`; the canonical text.
pub(crate) fn parse_ipv4(s: &str) -> Option<String> {
    let octets: Vec<&str> = s.split('.').collect();
    if octets.len() != 4 {
        return None;
    }
    let mut out = Vec::with_capacity(4);
    for o in octets {
        if o.is_empty() || o.len() > 3 || !o.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if o.len() > 1 && o.starts_with('0') {
            return None;
        }
        let v: u16 = o.parse().ok()?;
        if v > 255 {
            return None;
        }
        out.push(v);
    }
    Some(out.iter().map(u16::to_string).collect::<Vec<_>>().join("."))
}

/// `ipaddress.IPv6Address(s)`; the compressed canonical text as Python's
/// `str()` prints it (scope ids are kept).
pub(crate) fn parse_ipv6(s: &str) -> Option<String> {
    let (addr, scope) = match s.split_once('%') {
        Some((a, sc)) if !sc.is_empty() && !sc.contains('%') && !sc.contains('/') => (a, Some(sc)),
        Some(_) => return None,
        None => (s, None),
    };
    let hextets = parse_ipv6_hextets(addr)?;
    let mut text = compress_ipv6(&hextets);
    if let Some(sc) = scope {
        text.push('%');
        text.push_str(sc);
    }
    Some(text)
}

fn parse_ipv6_hextets(s: &str) -> Option<[u16; 8]> {
    if s.is_empty() || s.len() > 45 {
        return None;
    }
    let mut parts: Vec<&str> = s.split(':').collect();
    if parts.len() < 3 {
        return None;
    }
    let mut ipv4_tail: Option<[u16; 2]> = None;
    if let Some(last) = parts.last().copied()
        && last.contains('.')
    {
        let v4 = parse_ipv4(last)?;
        let b: Vec<u16> = v4.split('.').filter_map(|x| x.parse().ok()).collect();
        let (b0, b1, b2, b3) = (*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?);
        ipv4_tail = Some([(b0 << 8) | b1, (b2 << 8) | b3]);
        parts.pop();
        parts.push("0");
        parts.push("0");
    }
    let max_parts = 9;
    if parts.len() > max_parts {
        return None;
    }
    // find '::' (an empty part not at the ends, or the ends doubled)
    let skip_index = {
        let mut idx = None;
        for (i, p) in parts
            .iter()
            .enumerate()
            .skip(1)
            .take(parts.len().saturating_sub(2))
        {
            if p.is_empty() {
                if idx.is_some() {
                    return None;
                }
                idx = Some(i);
            }
        }
        idx
    };
    let mut hextets = [0u16; 8];
    let parse_h = |p: &str| -> Option<u16> {
        if p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(p, 16).ok()
    };
    match skip_index {
        Some(skip) => {
            let mut hi = skip;
            let mut lo = parts.len() - skip - 1;
            if parts.first().is_some_and(|p| p.is_empty()) {
                hi -= 1;
                if hi != 0 {
                    return None;
                }
            }
            if parts.last().is_some_and(|p| p.is_empty()) {
                lo -= 1;
                if lo != 0 {
                    return None;
                }
            }
            let skipped = 8usize.checked_sub(hi + lo)?;
            if skipped < 1 {
                return None;
            }
            let start = if parts.first().is_some_and(|p| p.is_empty()) {
                1
            } else {
                0
            };
            let mut out = 0;
            for p in parts.iter().skip(start).take(hi) {
                *hextets.get_mut(out)? = parse_h(p)?;
                out += 1;
            }
            out += skipped;
            let tail_start = parts.len() - lo;
            for p in parts.iter().skip(tail_start).take(lo) {
                *hextets.get_mut(out)? = parse_h(p)?;
                out += 1;
            }
        }
        None => {
            if parts.len() != 8 {
                return None;
            }
            for (i, p) in parts.iter().enumerate() {
                *hextets.get_mut(i)? = parse_h(p)?;
            }
        }
    }
    if let Some([a, b]) = ipv4_tail {
        hextets[6] = a;
        hextets[7] = b;
    }
    Some(hextets)
}

/// Python's `_compress_hextets`: the longest run (length > 1) of zero
/// hextets, the first one on a tie, becomes `::`.
fn compress_ipv6(h: &[u16; 8]) -> String {
    let (mut best_start, mut best_len) = (usize::MAX, 0usize);
    let mut i = 0;
    while i < 8 {
        if h[i] == 0 {
            let start = i;
            while i < 8 && h[i] == 0 {
                i += 1;
            }
            let len = i - start;
            if len > best_len && len > 1 {
                best_start = start;
                best_len = len;
            }
        } else {
            i += 1;
        }
    }
    let hex: Vec<String> = h.iter().map(|x| format!("{x:x}")).collect();
    if best_len == 0 {
        return hex.join(":");
    }
    let head = hex.get(..best_start).unwrap_or_default().join(":");
    let tail = hex
        .get(best_start + best_len..)
        .unwrap_or_default()
        .join(":");
    format!("{head}::{tail}")
}

/// `uuid.UUID(s)`: optional `urn:uuid:` prefix and braces, dashes anywhere,
/// 32 hex digits; canonical lowercase dashed text.
pub(crate) fn parse_uuid(s: &str) -> Option<String> {
    let mut t = s.replace("urn:", "").replace("uuid:", "");
    t = t.trim_matches(|c| c == '{' || c == '}').replace('-', "");
    if t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let t = t.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        t.get(0..8)?,
        t.get(8..12)?,
        t.get(12..16)?,
        t.get(16..20)?,
        t.get(20..32)?
    ))
}

/// `qubes.vm.validate_name(None, prop, name)`: every failure is a
/// `QubesValueError` when no holder is given.
pub(crate) fn validate_name(name: &str) -> Result<(), ApiError> {
    let fail = |m: &str| Err(ApiError::exc("QubesValueError", m));
    if name.chars().count() > 31 {
        return fail("VM name must be shorter than 32 characters");
    }
    if name.starts_with(|c: char| c.is_ascii_digit() || c == '_' || c == '.' || c == '-') {
        return fail("VM name cannot start with hyphen, underscore, dot or numbers");
    }
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return fail("VM name contains illegal characters");
    }
    if name == "Domain-0" {
        return fail("VM name cannot be 'Domain-0'");
    }
    if name == "none" || name == "default" {
        return fail("VM name cannot be 'none' nor 'default'");
    }
    if name.ends_with("-dm") {
        return fail("VM name cannot end with -dm");
    }
    Ok(())
}

/// `Tags.validate_tag`.
pub(crate) fn validate_tag(tag: &str) -> Result<(), ApiError> {
    if tag.is_empty()
        || !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::exc(
            "QubesInvalidTagError",
            "disallowed characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_like_python() {
        for (i, o) in [
            ("800", Some("800")),
            (" 800\n", Some("800")),
            ("+5", Some("5")),
            ("-0", Some("0")),
            ("007", Some("7")),
            ("1_000", Some("1000")),
            ("-12", Some("-12")),
            ("", None),
            ("abc", None),
            ("1__0", None),
            ("_1", None),
            ("1_", None),
            ("- 1", None),
            ("1.0", None),
            ("0x10", None),
            (
                "99999999999999999999999999",
                Some("99999999999999999999999999"),
            ),
        ] {
            assert_eq!(parse_int(i).as_deref(), o, "{i:?}");
        }
        assert_eq!(
            int_value("99999999999999999999999999999999999999999"),
            i128::MAX
        );
    }

    #[test]
    fn bools() {
        assert!(parse_bool("TRUE").unwrap());
        assert!(!parse_bool("Off").unwrap());
        assert!(parse_bool("maybe").is_err());
        assert!(parse_bool("").is_err());
    }

    #[test]
    fn ipv4() {
        assert_eq!(parse_ipv4("10.137.0.5").as_deref(), Some("10.137.0.5"));
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "010.1.1.1",
            "256.1.1.1",
            " 1.2.3.4",
            "1.2.3.a",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ipv6() {
        for (i, o) in [
            ("fd09:24ef:4179:0000::a89:5", "fd09:24ef:4179::a89:5"),
            ("::1", "::1"),
            ("::", "::"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),
            ("FE80::1%eth0", "fe80::1%eth0"),
            ("::ffff:1.2.3.4", "::ffff:102:304"),
            ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
        ] {
            assert_eq!(parse_ipv6(i).as_deref(), Some(o), "{i:?}");
        }
        for bad in [
            "",
            "1",
            ":::",
            "1::2::3",
            "12345::",
            "1:2:3:4:5:6:7:8:9",
            "g::",
        ] {
            assert_eq!(parse_ipv6(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uuids() {
        assert_eq!(
            parse_uuid("{5C6E0A52-1f0e-4a57-9d2e-3b7f8a9c0005}").as_deref(),
            Some("5c6e0a52-1f0e-4a57-9d2e-3b7f8a9c0005")
        );
        assert_eq!(parse_uuid("abc"), None);
    }

    #[test]
    fn names() {
        for ok in [
            "work",
            "a",
            "sys-net",
            "a.b_c-d",
            "abcdefghijklmnopqrstuvwxyz01234",
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1bad",
            "-x",
            ".x",
            "_x",
            "bad name!",
            "none",
            "default",
            "Domain-0",
            "x-dm",
            "abcdefghijklmnopqrstuvwxyz012345",
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
