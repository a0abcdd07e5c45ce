//! Line splitting and whitespace exactly as the reference loader sees them.
//!
//! The reference reads policy files in Python text mode: lines end at `\n`,
//! `\r\n` or a bare `\r` ("universal newlines"), and `str.strip()` /
//! `str.split()` treat every character for which `str.isspace()` holds as
//! whitespace. That set is wider than ASCII blanks (it includes `\x0b`,
//! `\x0c`, `\x1c`..`\x1f`, `\u{85}`, `\u{a0}` and the Unicode spaces), and
//! a byte the user cannot see can therefore split or end a token. We follow
//! it to the letter so that we accept and reject the same files.

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

/// `str.strip()` with no argument.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `str.split()` with no argument: runs of whitespace separate fields, no
/// empty fields.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|f| !f.is_empty())
}

/// Iterates the lines of a file the way Python's text mode does
/// (universal newlines), yielding `(line_number, line_without_terminator)`.
/// Line numbers start at 1.
pub(crate) struct Lines<'a> {
    rest: &'a str,
    lineno: u32,
    done: bool,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            rest: text,
            lineno: 0,
            done: text.is_empty(),
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (u32, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.lineno = self.lineno.saturating_add(1);
        match self.rest.find(['\n', '\r']) {
            Some(pos) => {
                let line = self.rest.get(..pos).unwrap_or_default();
                let after = self.rest.get(pos..).unwrap_or_default();
                let skip = if after.starts_with("\r\n") { 2 } else { 1 };
                self.rest = after.get(skip..).unwrap_or_default();
                if self.rest.is_empty() {
                    self.done = true;
                }
                Some((self.lineno, line))
            }
            None => {
                self.done = true;
                Some((self.lineno, self.rest))
            }
        }
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
    }
}
