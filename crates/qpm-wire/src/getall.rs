//! The escaping used by `admin.vm.property.GetAll` / `admin.property.GetAll`:
//! one `<name> <Get-reply>` line per property, where a backslash in the value
//! becomes `\\` and a newline becomes `\n`.

use std::fmt;

/// Escapes one property reply for a GetAll line.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A GetAll line with an escape other than `\\` and `\n`, or a trailing
/// backslash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEscape {
    /// Byte offset of the offending backslash.
    pub offset: usize,
}

impl fmt::Display for BadEscape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid escape at byte {}", self.offset)
    }
}

impl std::error::Error for BadEscape {}

/// Reverses [`escape`] on one line (bytes, as received).
pub fn unescape(line: &[u8]) -> Result<Vec<u8>, BadEscape> {
    let mut out = Vec::with_capacity(line.len());
    let mut iter = line.iter().enumerate();
    while let Some((i, &b)) = iter.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match iter.next() {
            Some((_, b'n')) => out.push(b'\n'),
            Some((_, b'\\')) => out.push(b'\\'),
            _ => return Err(BadEscape { offset: i }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape("a\\b\nc"), "a\\\\b\\nc");
        assert_eq!(unescape(b"a\\\\b\\nc").unwrap(), b"a\\b\nc");
        assert_eq!(unescape(b"x\\"), Err(BadEscape { offset: 1 }));
        assert_eq!(unescape(b"\\t"), Err(BadEscape { offset: 0 }));
    }

    proptest::proptest! {
        #[test]
        fn roundtrip(s in "\\PC{0,50}|[\\\\\n a]{0,20}") {
            let e = escape(&s);
            proptest::prop_assert!(!e.contains('\n'));
            proptest::prop_assert_eq!(unescape(e.as_bytes()).unwrap(), s.into_bytes());
        }
    }
}
