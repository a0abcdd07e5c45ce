//! Validated names: qubes, tags, features, labels, packages.
//!
//! The rules mirror qubesd's own checks (qube names, tags, feature names)
//! so that a package that validates here is never refused by qubesd for
//! its names.

/// Longest qube name qubesd accepts.
pub const MAX_QUBE_NAME: usize = 31;
/// Longest package name.
pub const MAX_PACKAGE_NAME: usize = 24;

/// Why a qube name is refused; `None` when it is valid. Same rules and
/// order as qubesd's `validate_name`.
pub fn qube_name_error(name: &str) -> Option<&'static str> {
    let Some(first) = name.bytes().next() else {
        return Some("a qube name cannot be empty");
    };
    if name.len() > MAX_QUBE_NAME {
        return Some("a qube name must be at most 31 characters");
    }
    if !first.is_ascii_alphabetic() {
        return Some("a qube name must start with a letter");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Some("a qube name may only contain letters, digits, `_`, `.` and `-`");
    }
    if matches!(name, "none" | "default" | "Domain-0") {
        return Some("`none`, `default` and `Domain-0` are reserved");
    }
    if name.ends_with("-dm") {
        return Some("a qube name must not end in `-dm`");
    }
    None
}

/// Whether `name` is the admin qube under one of its names.
pub fn is_dom0(name: &str) -> bool {
    name == "dom0" || name == "@adminvm" || name == "uuid:00000000-0000-0000-0000-000000000000"
}

/// Why a tag is refused (qubesd: non-empty, `[A-Za-z0-9_-]`).
pub fn tag_error(tag: &str) -> Option<&'static str> {
    if tag.is_empty() {
        return Some("a tag cannot be empty");
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        return Some("a tag may only contain letters, digits, `_` and `-`");
    }
    None
}

/// Why a feature name is refused (qubesd: `[a-zA-Z0-9_.-]+`).
pub fn feature_name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("a feature name cannot be empty");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Some("a feature name may only contain letters, digits, `_`, `.` and `-`");
    }
    if name == "service." {
        return Some("a service name cannot be empty");
    }
    None
}

/// Why a feature value is refused (qubesd: printable ASCII, may be empty).
pub fn feature_value_error(value: &str) -> Option<&'static str> {
    if value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        None
    } else {
        Some("a feature value must be printable ASCII (no newlines or control characters)")
    }
}

/// Why a package name is refused: `[a-z][a-z0-9-]*`, at most 24 characters.
pub fn package_name_error(name: &str) -> Option<&'static str> {
    let Some(first) = name.bytes().next() else {
        return Some("a package name cannot be empty");
    };
    if name.len() > MAX_PACKAGE_NAME {
        return Some("a package name must be at most 24 characters");
    }
    if !first.is_ascii_lowercase() {
        return Some("a package name must start with a lowercase letter");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("a package name may only contain lowercase letters, digits and `-`");
    }
    None
}

/// Why a label name is refused (qubesd: non-empty, `[A-Za-z0-9_.-]`).
pub fn label_error(label: &str) -> Option<&'static str> {
    if label.is_empty()
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Some("a label is a name such as `red`, `purple` or `label-3`");
    }
    None
}

/// The tag that marks a qube as part of package `pkg`.
pub fn package_tag(pkg: &str) -> String {
    format!("qpm-pkg-{pkg}")
}

/// The tag qubesd puts on every qube `mgmt` creates.
pub fn created_by_tag(mgmt: &str) -> String {
    format!("created-by-{mgmt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qube_names_follow_qubesd() {
        assert_eq!(qube_name_error("sd-app"), None);
        assert_eq!(qube_name_error("a"), None);
        assert!(qube_name_error("").is_some());
        assert!(qube_name_error("1abc").is_some());
        assert!(qube_name_error("-abc").is_some());
        assert!(qube_name_error("ab c").is_some());
        assert!(qube_name_error("none").is_some());
        assert!(qube_name_error("default").is_some());
        assert!(qube_name_error("Domain-0").is_some());
        assert!(qube_name_error("foo-dm").is_some());
        assert!(qube_name_error(&"a".repeat(31)).is_none());
        assert!(qube_name_error(&"a".repeat(32)).is_some());
    }

    #[test]
    fn package_names() {
        assert_eq!(package_name_error("split-browser"), None);
        assert!(package_name_error("Split").is_some());
        assert!(package_name_error("9lives").is_some());
        assert!(package_name_error("a_b").is_some());
        assert!(package_name_error(&"a".repeat(25)).is_some());
        assert!(package_name_error(&"a".repeat(24)).is_none());
    }

    #[test]
    fn tags_and_features() {
        assert_eq!(tag_error("sd-client_1"), None);
        assert!(tag_error("bad.tag").is_some());
        assert_eq!(feature_name_error("vm-config.SD_X"), None);
        assert!(feature_name_error("bad/name").is_some());
        assert!(feature_name_error("service.").is_some());
        assert!(feature_value_error("caf\u{e9}").is_some());
        assert!(feature_value_error("a\nb").is_some());
        assert_eq!(feature_value_error(""), None);
    }
}
