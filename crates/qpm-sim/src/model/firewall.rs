//! Firewall rules in the Admin API text form (`qubes/firewall.py`,
//! `Rule.from_api_string` / `Rule.api_rule`).

use super::{ApiError, ApiResult};

/// Canonical order of the rule options.
const ORDER: [&str; 8] = [
    "action",
    "proto",
    "dsthost",
    "dstports",
    "icmptype",
    "specialtarget",
    "expire",
    "comment",
];

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::exc("QubesValueError", msg)
}

fn check_host(v: &str) -> ApiResult<String> {
    let (addr, prefix) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    if let Some(ip) = super::pyval::parse_ipv4(addr) {
        let p = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| bad("invalid prefix"))?,
            None => 32,
        };
        return Ok(format!("{ip}/{p}"));
    }
    if let Some(ip) = super::pyval::parse_ipv6(addr) {
        let p = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 128)
                .ok_or_else(|| bad("invalid prefix"))?,
            None => 128,
        };
        return Ok(format!("{ip}/{p}"));
    }
    if prefix.is_some() {
        return Err(bad("invalid dsthost"));
    }
    let ok = !v.is_empty()
        && v.len() <= 255
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(v.to_string())
    } else {
        Err(bad("invalid dsthost"))
    }
}

/// Parses one rule line and returns its canonical text.
pub(crate) fn parse_rule(line: &str) -> ApiResult<String> {
    let mut opts: Vec<(String, String)> = Vec::new();
    let mut rest = line.trim_end_matches(['\n', '\r']);
    while !rest.is_empty() {
        let (tok, tail) = match rest.split_once(' ') {
            Some((t, r)) => (t, r),
            None => (rest, ""),
        };
        let (k, v) = tok
            .split_once('=')
            .ok_or_else(|| bad(format!("invalid rule element: {tok}")))?;
        if k == "comment" {
            let full = rest.strip_prefix("comment=").unwrap_or_default();
            opts.push(("comment".into(), full.to_string()));
            break;
        }
        if !ORDER.contains(&k) {
            return Err(bad(format!("unknown rule option: {k}")));
        }
        if opts.iter().any(|(ok, _)| ok == k) {
            return Err(bad(format!("duplicate rule option: {k}")));
        }
        let v = match k {
            "action" if v == "accept" || v == "drop" => v.to_string(),
            "proto" if matches!(v, "tcp" | "udp" | "icmp") => v.to_string(),
            "specialtarget" if v == "dns" => v.to_string(),
            "dsthost" => check_host(v)?,
            "dstports" => {
                let (a, b) = v.split_once('-').unwrap_or((v, v));
                let (a, b) = (a.parse::<u32>(), b.parse::<u32>());
                match (a, b) {
                    (Ok(a), Ok(b)) if (1..=65535).contains(&a) && (a..=65535).contains(&b) => {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    }
                    _ => return Err(bad("invalid dstports")),
                }
            }
            "icmptype" => v
                .parse::<u8>()
                .map_err(|_| bad("invalid icmptype"))?
                .to_string(),
            "expire" => {
                if v.starts_with('+') {
                    v.get(1..)
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| bad("invalid expire"))?;
                } else {
                    v.parse::<u64>().map_err(|_| bad("invalid expire"))?;
                }
                v.to_string()
            }
            _ => return Err(bad(format!("invalid value for {k}"))),
        };
        opts.push((k.to_string(), v));
        rest = tail;
    }
    let get = |k: &str| opts.iter().find(|(ok, _)| ok == k).map(|(_, v)| v.as_str());
    if get("action").is_none() {
        return Err(bad("missing action"));
    }
    if get("dstports").is_some() && !matches!(get("proto"), Some("tcp" | "udp")) {
        return Err(bad("dstports valid only for tcp and udp protocols"));
    }
    if get("icmptype").is_some() && get("proto") != Some("icmp") {
        return Err(bad("icmptype valid only for icmp protocol"));
    }
    let mut out = Vec::new();
    for k in ORDER {
        if let Some(v) = get(k) {
            out.push(format!("{k}={v}"));
        }
    }
    Ok(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(parse_rule("action=accept").unwrap(), "action=accept");
        assert_eq!(
            parse_rule("proto=tcp action=accept dstports=443 dsthost=1.2.3.4").unwrap(),
            "action=accept proto=tcp dsthost=1.2.3.4/32 dstports=443"
        );
        assert_eq!(
            parse_rule("action=drop comment=no more ads here").unwrap(),
            "action=drop comment=no more ads here"
        );
        assert!(parse_rule("proto=tcp").is_err());
        assert!(parse_rule("action=maybe").is_err());
        assert!(parse_rule("action=accept dstports=80").is_err());
        assert!(parse_rule("action=accept bogus=1").is_err());
        assert!(parse_rule("action=accept action=drop").is_err());
        assert!(parse_rule("action=accept dsthost=a..b").is_err());
    }
}
