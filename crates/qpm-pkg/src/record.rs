//! The "last applied" record kept on each qube of a package.
//!
//! One feature, `qpm.applied`, holds a compact JSON object: the package and
//! version that configured the qube, the package's qube names, whether the
//! qube holds user data, and every setting the package set (key → value,
//! `null` for "default"/"absent"). It lives on the qube itself, so any
//! management qube can see what was applied; `status` compares it with the
//! qube (drift), and re-apply/upgrade use it to keep the user's changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::Val;

/// The feature holding the record.
pub const RECORD_FEATURE: &str = "qpm.applied";

/// Largest record accepted when reading one back.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// What the package applied to one qube.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The qube it describes (a disposable inherits its template's features,
    /// so a record copied from elsewhere must not count).
    #[serde(rename = "n")]
    pub qube: String,
    /// Package name.
    #[serde(rename = "p")]
    pub package: String,
    /// Package version.
    #[serde(rename = "v")]
    pub version: String,
    /// The package's qubes (in that version).
    #[serde(rename = "q")]
    pub qubes: Vec<String>,
    /// Whether the qube holds user data (kept on removal without `--purge`).
    #[serde(rename = "d")]
    pub data: bool,
    /// Settings applied: key → value.
    #[serde(rename = "s")]
    pub settings: BTreeMap<String, Val>,
}

impl Record {
    /// The feature value.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a feature value; `None` when missing, too large or malformed.
    pub fn decode(s: &str) -> Option<Self> {
        if s.len() > MAX_RECORD_BYTES {
            return None;
        }
        serde_json::from_str(s).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let r = Record {
            qube: "a".into(),
            package: "p".into(),
            version: "1.0.0".into(),
            qubes: vec!["a".into()],
            data: true,
            settings: [
                ("p:netvm".to_owned(), None),
                ("t:x".to_owned(), Some(String::new())),
            ]
            .into_iter()
            .collect(),
        };
        let s = r.encode();
        assert!(!s.contains(' ') && !s.contains('\n'));
        assert_eq!(Record::decode(&s), Some(r));
        assert_eq!(Record::decode("{"), None);
        assert_eq!(Record::decode(&"x".repeat(MAX_RECORD_BYTES + 1)), None);
    }
}
