//! Unified diffs for review, safe to print on a terminal or show in a dialog.

use similar::TextDiff;

/// Largest side shown as text; bigger files are summarised.
pub const MAX_DIFF_INPUT: usize = 1024 * 1024;

/// Escapes everything a terminal could interpret (control characters,
/// including ESC and CR, and Unicode bidi/format characters), keeping tabs.
pub fn escape_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c == '\t' || (!c.is_control() && !bidi) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

/// What kind of change a diff describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New file.
    Create,
    /// Content replaced.
    Modify,
    /// File removed.
    Delete,
}

/// A unified diff of `old` → `new` for `label`, escaped. Secret files and
/// binary (non-UTF-8) content are summarised, never shown.
pub fn unified(label: &str, old: Option<&[u8]>, new: Option<&[u8]>, secret: bool) -> String {
    let label = escape_line(label);
    let size = |b: Option<&[u8]>| b.map_or(0, <[u8]>::len);
    if secret {
        return match (old, new) {
            (None, Some(n)) => format!(
                "secret file {label}: created ({} bytes, content not shown)\n",
                n.len()
            ),
            (Some(_), None) => format!("secret file {label}: deleted (content not shown)\n"),
            _ => format!(
                "secret file {label}: changed ({} -> {} bytes, content not shown)\n",
                size(old),
                size(new)
            ),
        };
    }
    let text = |b: Option<&[u8]>| -> Option<String> {
        match b {
            None => Some(String::new()),
            Some(b) if b.len() > MAX_DIFF_INPUT => None,
            Some(b) => std::str::from_utf8(b)
                .ok()
                .filter(|s| !s.contains('\0'))
                .map(str::to_owned),
        }
    };
    let (Some(a), Some(b)) = (text(old), text(new)) else {
        return format!(
            "binary or large file {label}: {} -> {} bytes\n",
            size(old),
            size(new)
        );
    };
    let diff = TextDiff::from_lines(&a, &b);
    let mut out = String::new();
    out.push_str(&format!(
        "--- {}\n",
        if old.is_some() {
            format!("a/{label}")
        } else {
            "/dev/null".into()
        }
    ));
    out.push_str(&format!(
        "+++ {}\n",
        if new.is_some() {
            format!("b/{label}")
        } else {
            "/dev/null".into()
        }
    ));
    for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
        out.push_str(&format!("{}\n", hunk.header()));
        for change in hunk.iter_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            let v = change.value();
            let line = v.strip_suffix('\n').unwrap_or(v);
            out.push(sign);
            out.push_str(&escape_line(line));
            out.push('\n');
            if change.missing_newline() {
                out.push_str("\\ No newline at end of file\n");
            }
        }
    }
    if a == b {
        out.push_str("(content unchanged; mode or owner changes only)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(escape_line("a\x1b[2Jb\rc\td"), "a\\u{1b}[2Jb\\u{d}c\td");
        assert_eq!(escape_line("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn diff_shapes() {
        let d = unified("~/.gitconfig", Some(b"a\nb\n"), Some(b"a\nc\n"), false);
        assert!(d.contains("-b\n+c\n"), "{d}");
        let d = unified("~/x", None, Some(b"new\n"), false);
        assert!(d.starts_with("--- /dev/null\n+++ b/~/x\n"), "{d}");
        let d = unified("~/x", Some(b"old\n"), None, false);
        assert!(d.contains("-old"), "{d}");
        let d = unified(
            "~/.netrc",
            Some(b"password hunter2\n"),
            Some(b"password x\n"),
            true,
        );
        assert!(!d.contains("hunter2") && d.contains("secret"), "{d}");
        let d = unified("~/bin", Some(b"\xff\x00"), Some(b"x"), false);
        assert!(d.contains("binary"), "{d}");
        let d = unified("~/e", Some(b"x\x1b[31m\n"), Some(b"y\n"), false);
        assert!(!d.contains('\x1b'), "{d}");
    }
}
