//! The repository index and its signed timestamp.
//!
//! The **timestamp** (`timestamp.minisig`) is a minisign signature of the
//! index file whose trusted comment carries what a client must know before
//! fetching anything else:
//!
//! ```text
//! qpm-timestamp format=1 version=42 expires=1767225600 index=index/<sha256>.json size=31337 sha256=<sha256>
//! ```
//!
//! The global signature authenticates that line on its own, so a client
//! whose cached index already has that hash is done after one small
//! request; otherwise it fetches the index, checks size and hash, and
//! checks the signature over the index bytes too.
//!
//! The **index** (`index/<sha256>.json`) is JSON:
//!
//! ```json
//! {"format": 1, "version": 42, "expires": 1767225600, "packages": [
//!   {"name": "dangerzone", "version": "1.0.0", "summary": "...",
//!    "requires": [], "archive": "packages/dangerzone-1.0.0.qpm",
//!    "sha256": "...", "size": 1234}]}
//! ```
//!
//! Its `version` and `expires` must equal the timestamp's, so a timestamp
//! cannot be paired with another index (mix-and-match). Parsing is strict:
//! unknown fields, bad names, versions, hashes, paths and duplicates are
//! refused, and sizes and counts are bounded by the constants below.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Format number written and accepted.
pub const FORMAT: u32 = 1;
/// Largest index accepted, in bytes.
pub const MAX_INDEX_BYTES: u64 = 32 << 20;
/// Largest timestamp file accepted, in bytes.
pub const MAX_TIMESTAMP_BYTES: u64 = 4096;
/// Most packages (name and version pairs) in one index.
pub const MAX_PACKAGES: usize = 100_000;
/// Most requirements per package.
pub const MAX_REQUIRES: usize = 64;
/// Longest summary, in characters.
pub const MAX_SUMMARY: usize = 200;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 8192;
/// Purpose word of timestamp signatures.
pub const TIMESTAMP_PURPOSE: &str = "qpm-timestamp";
/// Purpose word of key rotation signatures.
pub const ROTATION_PURPOSE: &str = "qpm-key-rotation";

/// One package version in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: semver::Version,
    /// One line.
    pub summary: String,
    /// Longer text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Requirements, as in the manifest (`name >= 1.2`).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Archive path relative to the repository root.
    pub archive: String,
    /// Lower-case hex SHA-256 of the archive.
    pub sha256: String,
    /// Archive size in bytes.
    pub size: u64,
}

/// The index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// [`FORMAT`].
    pub format: u32,
    /// Monotonic index version.
    pub version: u64,
    /// Expiry, Unix seconds.
    pub expires: u64,
    /// Packages, sorted by name then version.
    pub packages: Vec<Entry>,
}

/// The authenticated content of `timestamp.minisig`'s trusted comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    /// Index version.
    pub version: u64,
    /// Expiry, Unix seconds.
    pub expires: u64,
    /// Index path (`index/<sha256>.json`).
    pub index: String,
    /// Index size.
    pub size: u64,
    /// Index SHA-256.
    pub sha256: String,
}

fn inv(what: &str, reason: impl Into<String>) -> Error {
    Error::Index {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

/// Whether `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a path inside the repository: `dir/file`, one directory from
/// `allowed_dirs`, a file name of `[A-Za-z0-9._+-]` not starting with `.`.
pub fn check_repo_path(p: &str, allowed_dirs: &[&str]) -> Result<(), String> {
    let Some((dir, file)) = p.split_once('/') else {
        return Err(format!("`{}` is not `DIR/FILE`", p.escape_debug()));
    };
    if !allowed_dirs.contains(&dir) {
        return Err(format!(
            "`{}` is outside {allowed_dirs:?}",
            p.escape_debug()
        ));
    }
    if file.is_empty()
        || file.len() > 128
        || file.starts_with('.')
        || !file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
    {
        return Err(format!("bad file name in `{}`", p.escape_debug()));
    }
    Ok(())
}

fn check_text(s: &str, max: usize, multiline: bool) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("longer than {max}"));
    }
    if s.chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t')))
    {
        return Err("control characters".into());
    }
    Ok(())
}

/// Checks a requirement string (`name`, `name >= 1.2`).
pub fn check_requirement(s: &str) -> Result<(), String> {
    let s = s.trim();
    let (name, req) = match s.find(|c: char| c.is_whitespace() || "<>=^~".contains(c)) {
        Some(i) => (s.get(..i).unwrap_or(""), s.get(i..).unwrap_or("").trim()),
        None => (s, "*"),
    };
    if let Some(e) = qpm_pkg::names::package_name_error(name) {
        return Err(format!("`{}`: {e}", s.escape_debug()));
    }
    semver::VersionReq::parse(if req.is_empty() { "*" } else { req })
        .map_err(|e| format!("`{}`: {e}", s.escape_debug()))?;
    Ok(())
}

impl Index {
    /// Parses and validates an index (`what` names it in errors).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self, Error> {
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(Error::TooLarge {
                what: what.to_owned(),
                limit: MAX_INDEX_BYTES,
            });
        }
        let idx: Self = serde_json::from_slice(bytes).map_err(|e| inv(what, e.to_string()))?;
        idx.validate(what)?;
        Ok(idx)
    }

    /// Checks every field (see the module documentation).
    pub fn validate(&self, what: &str) -> Result<(), Error> {
        if self.format != FORMAT {
            return Err(inv(
                what,
                format!(
                    "format {} is not supported (this qpm reads format {FORMAT})",
                    self.format
                ),
            ));
        }
        if self.packages.len() > MAX_PACKAGES {
            return Err(Error::TooLarge {
                what: format!("{what}: package list"),
                limit: MAX_PACKAGES as u64,
            });
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.packages.iter().enumerate() {
            let at = |field: &str, r: String| {
                inv(
                    what,
                    format!("packages[{i}] (`{}`).{field}: {r}", p.name.escape_debug()),
                )
            };
            if let Some(e) = qpm_pkg::names::package_name_error(&p.name) {
                return Err(at("name", e.to_owned()));
            }
            check_text(&p.summary, MAX_SUMMARY * 4, false).map_err(|e| at("summary", e))?;
            if p.summary.chars().count() > MAX_SUMMARY {
                return Err(at(
                    "summary",
                    format!("longer than {MAX_SUMMARY} characters"),
                ));
            }
            if let Some(d) = &p.description {
                check_text(d, MAX_DESCRIPTION, true).map_err(|e| at("description", e))?;
            }
            if p.requires.len() > MAX_REQUIRES {
                return Err(at("requires", format!("more than {MAX_REQUIRES}")));
            }
            for r in &p.requires {
                check_requirement(r).map_err(|e| at("requires", e))?;
            }
            check_repo_path(&p.archive, &["packages"]).map_err(|e| at("archive", e))?;
            if !is_sha256_hex(&p.sha256) {
                return Err(at("sha256", "not 64 lower-case hex digits".into()));
            }
            if p.size > crate::archive::DEFAULT_LIMITS.max_archive_bytes {
                return Err(at(
                    "size",
                    format!(
                        "{} is above the archive limit of {}",
                        p.size,
                        crate::archive::DEFAULT_LIMITS.max_archive_bytes
                    ),
                ));
            }
            if !seen.insert((p.name.clone(), p.version.clone())) {
                return Err(at("version", format!("{} is listed twice", p.version)));
            }
        }
        Ok(())
    }

    /// The index as written by `qpm repo build` (sorted, compact JSON with
    /// one package a line, so diffs between versions stay readable).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!(
            "{{\"format\":{},\"version\":{},\"expires\":{},\"packages\":[",
            self.format, self.version, self.expires
        );
        for (i, p) in self.packages.iter().enumerate() {
            s.push_str(if i == 0 { "\n" } else { ",\n" });
            s.push_str(&serde_json::to_string(p).unwrap_or_default());
        }
        s.push_str("\n]}\n");
        s.into_bytes()
    }

    /// Versions of `name`, highest first.
    pub fn versions<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        let mut v: Vec<&Entry> = self.packages.iter().filter(|p| p.name == name).collect();
        v.sort_by(|a, b| b.version.cmp(&a.version));
        v.into_iter()
    }

    /// Distinct package names.
    pub fn names(&self) -> BTreeSet<&str> {
        self.packages.iter().map(|p| p.name.as_str()).collect()
    }
}

impl Timestamp {
    /// The trusted comment line.
    pub fn to_comment(&self) -> String {
        format!(
            "{TIMESTAMP_PURPOSE} format={FORMAT} version={} expires={} index={} size={} sha256={}",
            self.version, self.expires, self.index, self.size, self.sha256
        )
    }

    /// Parses the trusted comment of a timestamp signature (strict: the
    /// purpose word, then exactly these fields in this order).
    pub fn parse_comment(c: &str, what: &str) -> Result<Self, Error> {
        let mut it = c.split(' ');
        if it.next() != Some(TIMESTAMP_PURPOSE) {
            return Err(inv(
                what,
                format!(
                    "not a qpm timestamp signature (trusted comment must start with `{TIMESTAMP_PURPOSE}`)"
                ),
            ));
        }
        let mut field = |key: &str| -> Result<&str, Error> {
            let tok = it
                .next()
                .ok_or_else(|| inv(what, format!("missing `{key}=`")))?;
            tok.strip_prefix(key)
                .and_then(|t| t.strip_prefix('='))
                .ok_or_else(|| {
                    inv(
                        what,
                        format!("expected `{key}=`, found `{}`", tok.escape_debug()),
                    )
                })
        };
        let num = |k: &str, v: &str| -> Result<u64, Error> {
            // Canonical decimal only (no sign, no leading zero): one text per value.
            if v.is_empty()
                || v.len() > 20
                || (v.len() > 1 && v.starts_with('0'))
                || !v.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(inv(what, format!("`{k}` is not a number")));
            }
            v.parse::<u64>()
                .map_err(|_| inv(what, format!("`{k}` is not a number")))
        };
        let format = num("format", field("format")?)?;
        if format != u64::from(FORMAT) {
            return Err(inv(
                what,
                format!("format {format} is not supported (this qpm reads format {FORMAT})"),
            ));
        }
        let version = num("version", field("version")?)?;
        let expires = num("expires", field("expires")?)?;
        let index = field("index")?.to_owned();
        let size = num("size", field("size")?)?;
        let sha256 = field("sha256")?.to_owned();
        if it.next().is_some() {
            return Err(inv(what, "unexpected text after `sha256=`"));
        }
        check_repo_path(&index, &["index"]).map_err(|e| inv(what, format!("index: {e}")))?;
        if !is_sha256_hex(&sha256) {
            return Err(inv(what, "sha256 is not 64 lower-case hex digits"));
        }
        if index != format!("index/{sha256}.json") {
            return Err(inv(what, "index path does not match its hash"));
        }
        if size > MAX_INDEX_BYTES {
            return Err(Error::TooLarge {
                what: format!("{what}: index"),
                limit: MAX_INDEX_BYTES,
            });
        }
        Ok(Self {
            version,
            expires,
            index,
            size,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(name: &str, v: &str) -> Entry {
        Entry {
            name: name.into(),
            version: v.parse().unwrap(),
            summary: "s".into(),
            description: None,
            requires: vec!["base >= 1.0".into()],
            archive: format!("packages/{name}-{v}.qpm"),
            sha256: "0".repeat(64),
            size: 10,
        }
    }

    #[test]
    fn index_round_trips_and_validates() {
        let idx = Index {
            format: 1,
            version: 3,
            expires: 100,
            packages: vec![
                entry("a", "1.0.0"),
                entry("a", "2.0.0"),
                entry("b", "0.1.0"),
            ],
        };
        let b = idx.to_bytes();
        assert_eq!(Index::parse(&b, "t").unwrap(), idx);
        assert_eq!(
            idx.versions("a")
                .map(|e| e.version.to_string())
                .collect::<Vec<_>>(),
            ["2.0.0", "1.0.0"]
        );
    }

    #[test]
    fn index_rejects_bad_fields() {
        let good = Index {
            format: 1,
            version: 3,
            expires: 100,
            packages: vec![entry("a", "1.0.0")],
        };
        type Case = (&'static str, Box<dyn Fn(&mut Index)>);
        let cases: Vec<Case> = vec![
            ("name", Box::new(|i| i.packages[0].name = "../x".into())),
            (
                "archive",
                Box::new(|i| i.packages[0].archive = "packages/../../etc/passwd".into()),
            ),
            (
                "archive",
                Box::new(|i| i.packages[0].archive = "/etc/passwd".into()),
            ),
            (
                "archive",
                Box::new(|i| i.packages[0].archive = "index/x.qpm".into()),
            ),
            (
                "sha256",
                Box::new(|i| i.packages[0].sha256 = "A".repeat(64)),
            ),
            ("size", Box::new(|i| i.packages[0].size = u64::MAX)),
            (
                "requires",
                Box::new(|i| i.packages[0].requires = vec!["X".into()]),
            ),
            (
                "summary",
                Box::new(|i| i.packages[0].summary = "a\x1b[2Jb".into()),
            ),
            (
                "listed twice",
                Box::new(|i| i.packages.push(entry("a", "1.0.0"))),
            ),
            ("format", Box::new(|i| i.format = 2)),
        ];
        for (want, f) in cases {
            let mut i = good.clone();
            f(&mut i);
            let e = Index::parse(&i.to_bytes(), "t").unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = Index::parse(
            br#"{"format":1,"version":1,"expires":1,"packages":[],"x":1}"#,
            "t",
        );
        assert!(e.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn timestamp_comment_is_strict() {
        let sha = "ab".repeat(32);
        let t = Timestamp {
            version: 7,
            expires: 99,
            index: format!("index/{sha}.json"),
            size: 12,
            sha256: sha.clone(),
        };
        assert_eq!(Timestamp::parse_comment(&t.to_comment(), "t").unwrap(), t);
        for bad in [
            t.to_comment().replace("qpm-timestamp", "qpm-key-rotation"),
            t.to_comment().replace("version=7", "version=-7"),
            t.to_comment().replace("version=7", "version=07"),
            t.to_comment()
                .replace(&format!("index=index/{sha}"), "index=index/other"),
            format!("{} extra=1", t.to_comment()),
            t.to_comment().replace(" size=12", ""),
        ] {
            assert!(Timestamp::parse_comment(&bad, "t").is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Index::parse(&bytes, "p");
            let s = String::from_utf8_lossy(&bytes);
            let _ = Timestamp::parse_comment(&s, "p");
            let _ = crate::sign::Signature::parse(&s);
        }

        #[test]
        fn timestamp_round_trips(version in any::<u64>(), expires in any::<u64>(), size in 0..MAX_INDEX_BYTES, h in "[0-9a-f]{64}") {
            let t = Timestamp { version, expires, index: format!("index/{h}.json"), size, sha256: h };
            prop_assert_eq!(Timestamp::parse_comment(&t.to_comment(), "p").unwrap(), t);
        }
    }
}
