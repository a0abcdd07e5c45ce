//! Firewall rules in the Admin API text form, as qubesd parses and prints
//! them (`qubes/firewall.py`: `Rule.from_api_string`, `Rule.api_rule`).
//!
//! What qubesd does, and so what this does:
//!
//! * the comment is everything after the first `comment=` (it may hold
//!   spaces); the rest is split on single spaces into `key=value` options;
//! * keys are the rule's properties (`action`, `proto`, `dsthost`,
//!   `dstports`, `icmptype`, `specialtarget`, `expire`, `comment`), or
//!   `dst4`/`dst6`/`dstname`, which all set `dsthost`;
//! * every value is checked by its option class, and a bad rule raises a
//!   plain `ValueError`, which qubesd does not turn into an Admin API
//!   exception: the call is aborted (the client sees an empty answer);
//! * the rule is printed back in qubesd's property order (`action`,
//!   `expire`, the destination, `proto`, `specialtarget`, `dstports`,
//!   `icmptype`, `comment` last), the destination keyed by its kind
//!   (`dst4=`, `dst6=` with the prefix length, or `dsthost=` for a name),
//!   ports always as a range (`dstports=443-443`);
//! * an expired rule is kept but not listed by `admin.vm.firewall.Get`.

use super::pyval::{int_value, parse_int, parse_ipv4};
use super::{ApiError, ApiResult};

/// A `ValueError` (or another non-Qubes exception) inside the handler:
/// qubesd aborts the connection.
fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::abort(format!("ValueError: {}", msg.into()))
}

/// The rule's properties, in `Rule.api_rule` order.
const API_ORDER: [&str; 8] = [
    "action",
    "expire",
    "dsthost",
    "proto",
    "specialtarget",
    "dstports",
    "icmptype",
    "comment",
];

/// `RuleOption.__init__`: the characters any option value may have.
fn safe_option(v: &str) -> ApiResult<()> {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || ":;,./-_[]".contains(c))
    {
        Ok(())
    } else {
        Err(bad("strange characters in rule"))
    }
}

/// Python's `int()` as an `i128` (saturating), or a `ValueError`.
fn py_int(s: &str) -> ApiResult<i128> {
    parse_int(s)
        .map(|t| int_value(&t))
        .ok_or_else(|| bad(format!("invalid literal for int() with base 10: '{s}'")))
}

/// `socket.inet_pton(AF_INET6, s)`.
fn is_ipv6(s: &str) -> bool {
    s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// `socket.inet_pton(AF_INET, s)` (dotted quad, no leading zeros).
fn is_ipv4(s: &str) -> bool {
    parse_ipv4(s).is_some()
}

/// `DstHost(value)`: the API text (`dst4=...`, `dst6=...` or `dsthost=...`).
fn dsthost(v: &str) -> ApiResult<String> {
    let (kind, value) = match v.split_once('/') {
        Some((_, rest)) if rest.contains('/') => return Err(bad(format!("Too many /: {v}"))),
        None => {
            if is_ipv6(v) {
                ("dst6", format!("{v}/128"))
            } else if is_ipv4(v) && v.matches('.').count() == 3 {
                ("dst4", format!("{v}/32"))
            } else {
                if !v
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
                {
                    return Err(bad("Invalid hostname"));
                }
                ("dsthost", v.to_string())
            }
        }
        Some((host, prefix)) => {
            let prefix = py_int(prefix)?;
            if prefix < 0 {
                return Err(bad("netmask must be non-negative"));
            }
            if is_ipv6(host) {
                if prefix > 128 {
                    return Err(bad("netmask for IPv6 must be <= 128"));
                }
                ("dst6", v.to_string())
            } else if is_ipv4(host) {
                if prefix > 32 {
                    return Err(bad("netmask for IPv4 must be <= 32"));
                }
                if host.matches('.').count() != 3 {
                    return Err(bad("Invalid number of dots in IPv4 address"));
                }
                ("dst4", v.to_string())
            } else {
                return Err(bad(format!("Invalid IP address: {host}")));
            }
        }
    };
    safe_option(&value)?;
    Ok(format!("{kind}={value}"))
}

/// `DstPorts(value)`: the API text, always a range.
fn dstports(v: &str) -> ApiResult<String> {
    let (a, b) = match v.matches('-').count() {
        0 => (py_int(v)?, py_int(v)?),
        1 => {
            let (a, b) = v.split_once('-').unwrap_or((v, v));
            (py_int(a)?, py_int(b)?)
        }
        _ => return Err(bad(v.to_string())),
    };
    if !(0..=65536).contains(&a) || !(0..=65536).contains(&b) {
        return Err(bad("Ports out of range"));
    }
    if a > b {
        return Err(bad("Invalid port range"));
    }
    Ok(format!("dstports={a}-{b}"))
}

/// `Expire(value)`: checked like any option, then as a timestamp
/// `datetime.fromtimestamp` accepts (years 1 to 9999).
fn expire(v: &str) -> ApiResult<String> {
    safe_option(v)?;
    let t = py_int(v)?;
    if !(-62_135_596_800..=253_402_300_799).contains(&t) {
        return Err(bad("year is out of range"));
    }
    Ok(format!("expire={v}"))
}

/// One option's API text, checked by its class.
fn option(key: &str, v: &str) -> ApiResult<String> {
    let choice = |allowed: &[&str]| -> ApiResult<String> {
        safe_option(v)?;
        if allowed.contains(&v) {
            Ok(format!("{key}={v}"))
        } else {
            Err(bad(v.to_string()))
        }
    };
    match key {
        "action" => choice(&["accept", "drop"]),
        "proto" => choice(&["tcp", "udp", "icmp"]),
        "specialtarget" => choice(&["dns"]),
        "dsthost" => dsthost(v),
        "dstports" => dstports(v),
        "icmptype" => {
            let t = py_int(v)?;
            if !(0..=255).contains(&t) {
                return Err(bad("ICMP type out of range"));
            }
            Ok(format!("icmptype={t}"))
        }
        "expire" => expire(v),
        _ => Err(bad("Unknown firewall option")),
    }
}

/// `Rule.from_api_string(line).api_rule`: the rule as qubesd stores and
/// prints it, or the abort qubesd's `ValueError` causes.
pub(crate) fn parse_rule(line: &str) -> ApiResult<String> {
    let (opts, comment) = match line.split_once("comment=") {
        Some((o, c)) => (o, c),
        None => (line, ""),
    };
    // (property, API text); the property `dsthost` for dst4/dst6/dstname
    let mut set: Vec<(&str, String)> = Vec::new();
    if !comment.is_empty() {
        if !comment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":;,./-_[] ".contains(c))
        {
            return Err(bad("strange characters comment"));
        }
        set.push(("comment", format!("comment={comment}")));
    }
    // `str.strip()`: Python's whitespace
    let stripped = opts.trim_matches(|c: char| {
        c.is_ascii_whitespace() || c == '\x0b' || ('\x1c'..='\x1f').contains(&c)
    });
    for tok in stripped.split(' ') {
        let (k, v) = tok
            .split_once('=')
            .ok_or_else(|| bad("not enough values to unpack (expected 2, got 1)"))?;
        if set.iter().any(|(p, _)| *p == k) {
            return Err(bad(format!("Option '{k}' already set")));
        }
        let prop = match k {
            "action" | "proto" | "dsthost" | "dstports" | "icmptype" | "specialtarget"
            | "expire" | "comment" => k,
            "dst4" | "dst6" | "dstname" => {
                if set.iter().any(|(p, _)| *p == "dsthost") {
                    return Err(bad("Option 'dsthost' already set"));
                }
                "dsthost"
            }
            _ => return Err(bad("Unknown firewall option")),
        };
        let text = if k == "comment" {
            format!("comment={v}")
        } else {
            option(prop, v)?
        };
        set.push((prop, text));
    }
    let get = |p: &str| set.iter().find(|(k, _)| *k == p).map(|(_, t)| t.as_str());
    let proto = get("proto");
    if get("dstports").is_some() && !matches!(proto, Some("proto=tcp" | "proto=udp")) {
        return Err(bad("dstports valid only for 'tcp' and 'udp' protocols"));
    }
    if get("icmptype").is_some() && proto != Some("proto=icmp") {
        return Err(bad("icmptype valid only for 'icmp' protocol"));
    }
    if get("action").is_none() {
        return Err(bad("Required property 'action' not set"));
    }
    Ok(API_ORDER
        .iter()
        .filter_map(|p| get(p))
        .collect::<Vec<_>>()
        .join(" "))
}

/// Whether a stored rule (in [`parse_rule`]'s form) has expired at `now`
/// (seconds since the epoch): `Rule.api_rule` is then `None` and
/// `admin.vm.firewall.Get` leaves the rule out.
pub(crate) fn expired(rule: &str, now: f64) -> bool {
    let opts = rule.split_once("comment=").map_or(rule, |(o, _)| o);
    opts.split(' ')
        .find_map(|t| t.strip_prefix("expire="))
        .and_then(parse_int)
        .is_some_and(|t| (int_value(&t) as f64) < now)
}

/// Python's `str.splitlines()` on ASCII text.
pub(crate) fn py_splitlines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        let sep = match b[i] {
            b'\r' if b.get(i + 1) == Some(&b'\n') => 2,
            b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1e => 1,
            _ => 0,
        };
        if sep > 0 {
            out.push(&text[start..i]);
            i += sep;
            start = i;
        } else {
            i += 1;
        }
    }
    if start < b.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aborted(line: &str) -> bool {
        matches!(parse_rule(line), Err(ApiError::Abort(_)))
    }

    #[test]
    fn canonical_form_is_qubesds() {
        assert_eq!(parse_rule("action=accept").unwrap(), "action=accept");
        // property order, dst4 with its prefix, ports as a range
        assert_eq!(
            parse_rule("proto=tcp action=accept dstports=443 dsthost=1.2.3.4").unwrap(),
            "action=accept dst4=1.2.3.4/32 proto=tcp dstports=443-443"
        );
        assert_eq!(
            parse_rule("action=drop dst4=10.0.0.0/8").unwrap(),
            "action=drop dst4=10.0.0.0/8"
        );
        assert_eq!(
            parse_rule("action=accept dst6=fd00::/8 proto=udp dstports=53-54").unwrap(),
            "action=accept dst6=fd00::/8 proto=udp dstports=53-54"
        );
        assert_eq!(
            parse_rule("action=accept dsthost=fd00::1").unwrap(),
            "action=accept dst6=fd00::1/128"
        );
        assert_eq!(
            parse_rule("action=accept dstname=example.com proto=tcp").unwrap(),
            "action=accept dsthost=example.com proto=tcp"
        );
        assert_eq!(
            parse_rule("specialtarget=dns action=accept").unwrap(),
            "action=accept specialtarget=dns"
        );
        assert_eq!(
            parse_rule("action=accept proto=icmp icmptype=08").unwrap(),
            "action=accept proto=icmp icmptype=8"
        );
        // the comment is everything after `comment=`, and must come last
        assert_eq!(
            parse_rule("action=drop expire=0012 comment=no more ads: [here]").unwrap(),
            "action=drop expire=0012 comment=no more ads: [here]"
        );
        assert!(aborted("action=drop comment=a=b"));
        assert!(aborted("comment=x action=accept"));
    }

    #[test]
    fn printing_is_stable() {
        for line in [
            "action=accept",
            "action=drop dst4=10.0.0.0/8",
            "action=accept dst6=fd00::1/128 proto=udp dstports=53-53",
            "action=accept dsthost=example.com proto=tcp dstports=1-1024",
            "action=accept expire=12 specialtarget=dns comment=a b",
            "action=accept proto=icmp icmptype=0",
        ] {
            assert_eq!(parse_rule(line).unwrap(), line);
        }
        // the text an earlier simulator stored
        assert_eq!(
            parse_rule("action=accept proto=tcp dsthost=1.2.3.4/32 dstports=443").unwrap(),
            "action=accept dst4=1.2.3.4/32 proto=tcp dstports=443-443"
        );
    }

    #[test]
    fn bad_rules_abort_as_value_errors() {
        assert!(aborted("proto=tcp"));
        assert!(aborted("action=maybe"));
        assert!(aborted("action=accept dstports=80"));
        assert!(aborted("action=accept proto=udp icmptype=3"));
        assert!(aborted("action=accept bogus=1"));
        assert!(aborted("action=accept action=drop"));
        assert!(aborted("action=accept dst4=1.2.3.4 dsthost=5.6.7.8"));
        assert!(aborted("action=accept dsthost=Example.com"));
        assert!(aborted("action=accept dsthost=1.2.3.4/33"));
        assert!(aborted("action=accept dsthost=a/b/c"));
        assert!(aborted("action=accept proto=tcp dstports=65537"));
        assert!(aborted("action=accept proto=tcp dstports=90-80"));
        assert!(aborted("action=accept expire=+300"));
        assert!(aborted("action=accept  proto=tcp"));
        assert!(aborted("action=accept comment=caf\u{e9}"));
        assert!(aborted(""));
    }

    #[test]
    fn expiry_and_lines() {
        let r = parse_rule("action=accept expire=100 comment=expire 99999999999").unwrap();
        assert!(expired(&r, 101.5));
        assert!(!expired(&r, 99.0));
        assert!(!expired("action=accept", 1e12));
        assert_eq!(
            py_splitlines("a\nb\r\nc\rd\x0be"),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(py_splitlines("a\n\nb\n"), ["a", "", "b"]);
        assert!(py_splitlines("").is_empty());
    }
}
