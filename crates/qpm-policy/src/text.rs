//! Line splitting and whitespace exactly as the reference loader sees them,
//! and [`Text`], the cheap shared string every token is made of.
//!
//! The reference reads policy files in Python text mode: lines end at `\n`,
//! `\r\n` or a bare `\r` ("universal newlines"), and `str.strip()` /
//! `str.split()` treat every character for which `str.isspace()` holds as
//! whitespace. That set is wider than ASCII blanks (it includes `\x0b`,
//! `\x0c`, `\x1c`..`\x1f`, `\u{85}`, `\u{a0}` and the Unicode spaces), and
//! a byte the user cannot see can therefore split or end a token. We follow
//! it to the letter so that we accept and reject the same files.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// A piece of policy text: a range of a shared buffer (the file it was read
/// from), so tokens cost no allocation and clone in constant time. It
/// behaves as a `str` (`Deref`, `Eq`, `Ord`, `Hash`, `Borrow<str>`).
#[derive(Clone)]
pub struct Text {
    buf: Buf,
    start: u32,
    end: u32,
}

/// A shared text buffer (a thin pointer, so [`Text`] stays small).
pub(crate) type Buf = Arc<String>;

impl Text {
    /// The whole of `buf`.
    pub(crate) fn whole(buf: Buf) -> Self {
        let end = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        Self { buf, start: 0, end }
    }

    /// `sub`, which must lie inside `buf`; anything else is copied.
    pub(crate) fn within(buf: &Buf, sub: &str) -> Self {
        let at = (sub.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
        let end = at.wrapping_add(sub.len());
        // `as_str` checks the range again; here it only has to lie inside.
        match (u32::try_from(at), u32::try_from(end)) {
            (Ok(start), Ok(e)) if at <= end && end <= buf.len() => Self {
                buf: buf.clone(),
                start,
                end: e,
            },
            _ => Self::from(sub),
        }
    }

    /// The text as a `str`.
    pub fn as_str(&self) -> &str {
        self.buf
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self::whole(Arc::new(s.to_owned()))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self::whole(Arc::new(s))
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `str.isspace()` of Python 3: bidirectional class WS, B or S, or category Zs.
pub(crate) fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{0b}'
            | '\u{0c}'
            | '\r'
            | '\u{1c}'..='\u{1f}'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Whether the character starting with byte `b` may be whitespace: an
/// ASCII whitespace byte, or the lead byte of a multi-byte character.
fn ascii_space_or_multibyte(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f | b' ') || b >= 0x80
}

/// The length of the whitespace character at the start of `s`, if any.
fn space_at(s: &str) -> Option<usize> {
    let b = *s.as_bytes().first()?;
    if b < 0x80 {
        return ascii_space_or_multibyte(b).then_some(1);
    }
    let c = s.chars().next()?;
    is_py_space(c).then(|| c.len_utf8())
}

/// `str.strip()` with no argument.
pub(crate) fn py_strip(s: &str) -> &str {
    let bytes = s.as_bytes();
    if bytes.first().is_none_or(|&b| !ascii_space_or_multibyte(b))
        && bytes.last().is_none_or(|&b| !ascii_space_or_multibyte(b))
    {
        return s;
    }
    s.trim_matches(is_py_space)
}

/// `str.split()` with no argument: runs of whitespace separate fields, no
/// empty fields.
pub(crate) fn py_split(s: &str) -> PySplit<'_> {
    PySplit {
        rest: s,
        ascii: s.is_ascii(),
    }
}

/// ASCII bytes that are Python whitespace.
const ASCII_SPACE: [bool; 128] = {
    let mut t = [false; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = matches!(
            i as u8,
            b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f | b' '
        );
        i += 1;
    }
    t
};

fn ascii_space(b: u8) -> bool {
    ASCII_SPACE.get(b as usize).copied().unwrap_or(false)
}

/// Iterator of [`py_split`].
pub(crate) struct PySplit<'a> {
    rest: &'a str,
    /// The text is ASCII: whitespace is one byte of a small set.
    ascii: bool,
}

impl<'a> Iterator for PySplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.ascii {
            let bytes = self.rest.as_bytes();
            let start = bytes.iter().position(|&b| !ascii_space(b))?;
            let len = bytes
                .get(start..)
                .unwrap_or_default()
                .iter()
                .position(|&b| ascii_space(b))
                .unwrap_or(bytes.len() - start);
            let end = start + len;
            let field = self.rest.get(start..end).unwrap_or_default();
            self.rest = self.rest.get(end..).unwrap_or_default();
            return Some(field);
        }
        // Skip whitespace.
        while let Some(n) = space_at(self.rest) {
            self.rest = self.rest.get(n..).unwrap_or_default();
        }
        if self.rest.is_empty() {
            return None;
        }
        // Take up to the next whitespace.
        let bytes = self.rest.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes.get(i).copied().unwrap_or(0);
            if ascii_space_or_multibyte(b) {
                let at = self.rest.get(i..).unwrap_or_default();
                match space_at(at) {
                    Some(_) => break,
                    None => {
                        i += at.chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                }
            }
            i += 1;
        }
        let (field, rest) = self.rest.split_at_checked(i).unwrap_or((self.rest, ""));
        self.rest = rest;
        Some(field)
    }
}

/// The whitespace-separated fields of one line (`str.split()`), as byte
/// ranges of its text, kept inline for the usual handful; reused from line
/// to line.
pub(crate) struct Fields {
    inline: [(u32, u32); 12],
    len: usize,
    more: Vec<(u32, u32)>,
}

impl Fields {
    pub(crate) fn new() -> Self {
        Self {
            inline: [(0, 0); 12],
            len: 0,
            more: Vec::new(),
        }
    }

    /// Splits `line` like `str.split()`.
    #[cfg(test)]
    pub(crate) fn split(line: &str) -> Self {
        let mut f = Self::new();
        for field in py_split(line) {
            f.push_sub(line, field);
        }
        f
    }

    fn clear(&mut self) {
        self.len = 0;
        self.more.clear();
    }

    fn push(&mut self, from: usize, to: usize) {
        let r = (
            u32::try_from(from).unwrap_or(u32::MAX),
            u32::try_from(to).unwrap_or(u32::MAX),
        );
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = r,
            None => self.more.push(r),
        }
        self.len += 1;
    }

    /// Records `field`, a part of `text`.
    fn push_sub(&mut self, text: &str, field: &str) {
        let from = (field.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
        self.push(from, from.saturating_add(field.len()));
    }

    /// Number of fields.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The fields as parts of `text` (the text they were split from).
    pub(crate) fn of<'t>(&self, text: &'t str) -> FieldsIn<'t, '_> {
        FieldsIn { text, fields: self }
    }
}

/// [`Fields`] together with their text.
#[derive(Clone, Copy)]
pub(crate) struct FieldsIn<'t, 'f> {
    text: &'t str,
    fields: &'f Fields,
}

impl<'t, 'f> FieldsIn<'t, 'f> {
    /// Field `i`.
    pub(crate) fn get(&self, i: usize) -> Option<&'t str> {
        if i >= self.fields.len {
            return None;
        }
        let (a, b) = match self.fields.inline.get(i) {
            Some(r) => *r,
            None => *self.fields.more.get(i - self.fields.inline.len())?,
        };
        self.text.get(a as usize..b as usize)
    }

    /// Fields from `i` on.
    pub(crate) fn from(self, i: usize) -> impl Iterator<Item = &'t str> + use<'t, 'f> {
        (i..self.fields.len).filter_map(move |j| self.get(j))
    }
}

/// Byte classes for the one-pass line and field scanner.
const REGULAR: u8 = 0;
const SPACE: u8 = 1;
const NEWLINE: u8 = 2;
const MULTIBYTE: u8 = 3;

const CLASS: [u8; 256] = {
    let mut t = [REGULAR; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            b'\n' | b'\r' => NEWLINE,
            b'\t' | 0x0b | 0x0c | 0x1c..=0x1f | b' ' => SPACE,
            0x80..=0xff => MULTIBYTE,
            _ => REGULAR,
        };
        i += 1;
    }
    t
};

/// A position in a text, reading it line by line the way Python's text
/// mode does (universal newlines): lines end at `\n`, `\r\n` or `\r`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LineCursor {
    pos: usize,
    lineno: u32,
}

impl LineCursor {
    /// The next line of `text` like [`LineCursor::next`], split into
    /// `fields` (`str.split()`) in the same pass.
    pub(crate) fn next_fields<'a>(
        &mut self,
        text: &'a str,
        fields: &mut Fields,
    ) -> Option<(u32, &'a str)> {
        fields.clear();
        let bytes = text.as_bytes();
        let start = self.pos;
        if start >= bytes.len() {
            return None;
        }
        self.lineno = self.lineno.saturating_add(1);
        let mut i = start;
        let mut multibyte = false;
        let n = bytes.len();
        let class = |i: usize| bytes.get(i).map_or(NEWLINE, |&b| CLASS[b as usize]);
        let end = loop {
            while class(i) == SPACE {
                i += 1;
            }
            if class(i) == NEWLINE {
                break i.min(n);
            }
            let from = i;
            loop {
                match class(i) {
                    REGULAR => i += 1,
                    MULTIBYTE => {
                        multibyte = true;
                        i += 1;
                    }
                    _ => break,
                }
            }
            fields.push(from, i);
        };
        let line = text.get(start..end).unwrap_or_default();
        let skip = match (bytes.get(end), bytes.get(end + 1)) {
            (Some(b'\r'), Some(b'\n')) => 2,
            (Some(_), _) => 1,
            (None, _) => 0,
        };
        self.pos = end + skip;
        if multibyte {
            // Non-ASCII whitespace splits too: redo this line the slow way.
            fields.clear();
            for f in py_split(line) {
                fields.push_sub(text, f);
            }
        }
        Some((self.lineno, line))
    }

    /// The next `(line_number, line_without_terminator)` of `text`
    /// (numbers start at 1).
    pub(crate) fn next<'a>(&mut self, text: &'a str) -> Option<(u32, &'a str)> {
        let rest = text.get(self.pos..).filter(|r| !r.is_empty())?;
        self.lineno = self.lineno.saturating_add(1);
        match rest.bytes().position(|b| b == b'\n' || b == b'\r') {
            Some(p) => {
                let skip = if rest.get(p..).is_some_and(|a| a.starts_with("\r\n")) {
                    2
                } else {
                    1
                };
                self.pos = self.pos.saturating_add(p).saturating_add(skip);
                Some((self.lineno, rest.get(..p).unwrap_or_default()))
            }
            None => {
                self.pos = text.len();
                Some((self.lineno, rest))
            }
        }
    }
}

/// The lines of a text, as an iterator (see [`LineCursor`]).
pub(crate) struct Lines<'a> {
    text: &'a str,
    cursor: LineCursor,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            cursor: LineCursor::default(),
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (u32, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        self.cursor.next(self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<(u32, &str)> {
        Lines::new(s).collect()
    }

    #[test]
    fn universal_newlines() {
        assert_eq!(lines(""), vec![]);
        assert_eq!(lines("a"), vec![(1, "a")]);
        assert_eq!(lines("a\n"), vec![(1, "a")]);
        assert_eq!(
            lines("a\r\nb\rc\n\nd"),
            vec![(1, "a"), (2, "b"), (3, "c"), (4, ""), (5, "d")]
        );
        assert_eq!(lines("\n\n"), vec![(1, ""), (2, "")]);
        assert_eq!(lines("a\r"), vec![(1, "a")]);
    }

    #[test]
    fn python_whitespace() {
        assert_eq!(py_strip("\u{1c} a b\u{a0}"), "a b");
        assert_eq!(
            py_split("a\u{0b}b\u{3000}c  d").collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        assert!(!is_py_space('\u{200b}'));
        assert!(!is_py_space('\u{feff}'));
        assert_eq!(
            py_split("é a\u{85}b\u{200b}c  ").collect::<Vec<_>>(),
            ["é", "a", "b\u{200b}c"]
        );
        assert_eq!(py_split("   ").count(), 0);
        assert_eq!(py_strip("\u{2000}x\u{3000}"), "x");
        assert_eq!(py_strip("x"), "x");
        assert_eq!(py_strip("é"), "é");
        for line in [
            "",
            "  ",
            "a",
            " a  b\tc ",
            "x\u{a0}y z",
            "a b c d e f g h i j k l m n o p",
            "é\u{85}x",
        ] {
            let f = Fields::split(line);
            let want: Vec<&str> = py_split(line).collect();
            assert_eq!(f.len(), want.len());
            assert_eq!(f.of(line).from(0).collect::<Vec<_>>(), want, "{line:?}");
        }
        // The one-pass scanner agrees with lines + split.
        let text = "a b\r\n\tc\x0bd \r\re\u{a0}f g\n\nh\u{2028}i\x1c j";
        let mut cur = LineCursor::default();
        let mut fields = Fields::new();
        let mut got = Vec::new();
        while let Some((n, line)) = cur.next_fields(text, &mut fields) {
            got.push((n, line, fields.of(text).from(0).collect::<Vec<_>>()));
        }
        let want: Vec<_> = Lines::new(text)
            .map(|(n, l)| (n, l, py_split(l).collect::<Vec<_>>()))
            .collect();
        assert_eq!(got, want);
    }
}
