//! Parsers of qubesd's success values. Each takes untrusted bytes (the
//! reply after the `0\0` header), is bounded, never panics, and says what is
//! wrong.

use std::collections::BTreeMap;
use std::fmt;

/// Most lines accepted in a list reply.
pub const MAX_LINES: usize = 200_000;
/// Longest name (qube, property, feature, tag, label) accepted.
pub const MAX_NAME_LEN: usize = 1024;

/// A reply that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

fn text(b: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(b).map_err(|e| err(format!("not UTF-8 at byte {}", e.valid_up_to())))
}

/// `<item>\n` lines (the last newline optional); empty reply: no items.
pub fn lines(b: &[u8]) -> Result<Vec<String>, ParseError> {
    let t = text(b)?;
    let body = t.strip_suffix('\n').unwrap_or(t);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (i, l) in body.split('\n').enumerate() {
        if i >= MAX_LINES {
            return Err(err(format!("more than {MAX_LINES} lines")));
        }
        out.push(l.to_string());
    }
    Ok(out)
}

/// Lines that must be names (non-empty, no spaces or control characters).
pub fn names(b: &[u8]) -> Result<Vec<String>, ParseError> {
    let v = lines(b)?;
    for (i, n) in v.iter().enumerate() {
        if n.is_empty()
            || n.len() > MAX_NAME_LEN
            || n.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(err(format!(
                "line {}: invalid name `{}`",
                i + 1,
                n.escape_debug()
            )));
        }
    }
    Ok(v)
}

/// One `admin.vm.List` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QubeInfo {
    /// Name.
    pub name: String,
    /// Class (`AppVM`, ...).
    pub class: String,
    /// Power state (`Halted`, `Running`, ...).
    pub state: String,
    /// UUID, when the server sends it.
    pub uuid: Option<String>,
}

/// `admin.vm.List`: `<name> class=<C> state=<S> uuid=<U>` lines; unknown
/// `key=value` tokens are ignored, `class` and `state` are required.
pub fn vm_list(b: &[u8]) -> Result<Vec<QubeInfo>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in lines(b)?.into_iter().enumerate() {
        let mut toks = line.split(' ');
        let name = toks.next().unwrap_or_default();
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('=') {
            return Err(err(format!("line {}: no qube name", i + 1)));
        }
        let (mut class, mut state, mut uuid) = (None, None, None);
        for t in toks {
            match t.split_once('=') {
                Some(("class", v)) => class = Some(v.to_string()),
                Some(("state", v)) => state = Some(v.to_string()),
                Some(("uuid", v)) => uuid = Some(v.to_string()),
                Some(_) => {}
                None => {
                    return Err(err(format!(
                        "line {}: token without `=`: `{}`",
                        i + 1,
                        t.escape_debug()
                    )));
                }
            }
        }
        let (Some(class), Some(state)) = (class, state) else {
            return Err(err(format!("line {}: class or state missing", i + 1)));
        };
        out.push(QubeInfo {
            name: name.to_string(),
            class,
            state,
            uuid,
        });
    }
    Ok(out)
}

/// Property types as the API names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropType {
    /// `bool`.
    Bool,
    /// `int`.
    Int,
    /// `str`.
    Str,
    /// `vm`.
    Vm,
    /// `label`.
    Label,
}

impl PropType {
    fn parse(s: &str) -> Result<Self, ParseError> {
        Ok(match s {
            "bool" => Self::Bool,
            "int" => Self::Int,
            "str" => Self::Str,
            "vm" => Self::Vm,
            "label" => Self::Label,
            other => {
                return Err(err(format!(
                    "unknown property type `{}`",
                    other.escape_debug()
                )));
            }
        })
    }
}

/// A property value as `admin.vm.property.Get` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// Whether it holds its default.
    pub is_default: bool,
    /// Its type.
    pub ty: PropType,
    /// Its text (empty: none / no value).
    pub value: String,
}

impl Property {
    /// The value as a boolean (`True`/`False`).
    pub fn as_bool(&self) -> Option<bool> {
        match self.value.as_str() {
            "True" => Some(true),
            "False" => Some(false),
            _ => None,
        }
    }

    /// The value as an integer.
    pub fn as_int(&self) -> Option<i64> {
        self.value.parse().ok()
    }

    /// The qube named (`None` for none).
    pub fn as_vm(&self) -> Option<&str> {
        (!self.value.is_empty()).then_some(self.value.as_str())
    }
}

/// `default=<True|False> type=<t> <value>`.
pub fn property(b: &[u8]) -> Result<Property, ParseError> {
    let t = text(b)?;
    let (d, rest) = t.split_once(' ').ok_or_else(|| err("no `type=` field"))?;
    let is_default = match d {
        "default=True" => true,
        "default=False" => false,
        other => return Err(err(format!("bad default field `{}`", other.escape_debug()))),
    };
    let (ty, value) = rest
        .split_once(' ')
        .ok_or_else(|| err("no value separator"))?;
    let ty = ty
        .strip_prefix("type=")
        .ok_or_else(|| err("bad type field"))?;
    Ok(Property {
        is_default,
        ty: PropType::parse(ty)?,
        value: value.to_string(),
    })
}

/// `type=<t> <value>` or empty (no default).
pub fn property_default(b: &[u8]) -> Result<Option<(PropType, String)>, ParseError> {
    if b.is_empty() {
        return Ok(None);
    }
    let t = text(b)?;
    let (ty, value) = t.split_once(' ').ok_or_else(|| err("no value separator"))?;
    let ty = ty
        .strip_prefix("type=")
        .ok_or_else(|| err("bad type field"))?;
    Ok(Some((PropType::parse(ty)?, value.to_string())))
}

/// `admin.*.property.GetAll`: `<name> <Get reply, escaped>` lines.
pub fn property_all(b: &[u8]) -> Result<BTreeMap<String, Property>, ParseError> {
    let mut out = BTreeMap::new();
    let body = b.strip_suffix(b"\n").unwrap_or(b);
    if body.is_empty() {
        return Ok(out);
    }
    for (i, raw) in body.split(|&c| c == b'\n').enumerate() {
        if i >= MAX_LINES {
            return Err(err(format!("more than {MAX_LINES} lines")));
        }
        let line =
            qpm_wire::getall::unescape(raw).map_err(|e| err(format!("line {}: {e}", i + 1)))?;
        let sp = line
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| err(format!("line {}: no property name", i + 1)))?;
        let (name, rest) = line.split_at(sp);
        let name = text(name)?;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(err(format!("line {}: bad property name", i + 1)));
        }
        let p = property(rest.get(1..).unwrap_or_default())
            .map_err(|e| err(format!("line {}: {e}", i + 1)))?;
        out.insert(name.to_string(), p);
    }
    Ok(out)
}

/// `key=value` lines (volume info, pool info) into a map.
pub fn key_values(b: &[u8]) -> Result<BTreeMap<String, String>, ParseError> {
    let mut out = BTreeMap::new();
    for (i, l) in lines(b)?.into_iter().enumerate() {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| err(format!("line {}: no `=`", i + 1)))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `admin.vm.CurrentState`: space-separated `key=value`.
pub fn current_state(b: &[u8]) -> Result<BTreeMap<String, String>, ParseError> {
    let t = text(b)?;
    let mut out = BTreeMap::new();
    for tok in t.split(' ').filter(|x| !x.is_empty()).take(64) {
        let (k, v) = tok
            .split_once('=')
            .ok_or_else(|| err(format!("token without `=`: `{}`", tok.escape_debug())))?;
        out.insert(k.to_string(), v.to_string());
    }
    if !out.contains_key("power_state") {
        return Err(err("no power_state"));
    }
    Ok(out)
}

/// `admin.vm.tag.Get`: `1` or `0`.
pub fn flag(b: &[u8]) -> Result<bool, ParseError> {
    match b {
        b"1" => Ok(true),
        b"0" => Ok(false),
        _ => Err(err("expected 1 or 0")),
    }
}

/// `policy.Get`: `sha256:<hex>\n<content>`.
pub fn policy_get(b: &[u8]) -> Result<(String, Vec<u8>), ParseError> {
    let nl = b
        .iter()
        .position(|&c| c == b'\n')
        .ok_or_else(|| err("no token line"))?;
    let (tok, rest) = b.split_at(nl);
    let tok = text(tok)?;
    let hexpart = tok
        .strip_prefix("sha256:")
        .ok_or_else(|| err("token is not sha256:"))?;
    if hexpart.len() != 64 || !hexpart.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(err("malformed token"));
    }
    Ok((tok.to_string(), rest.get(1..).unwrap_or_default().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_list_lines() {
        let v = vm_list(b"dom0 class=AdminVM state=Running uuid=00000000-0000-0000-0000-000000000000\nwork class=AppVM state=Halted\n").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].uuid, None);
        assert_eq!(v[0].class, "AdminVM");
        assert!(vm_list(b"work state=Halted\n").is_err());
        assert!(vm_list(b"work class=AppVM state=Halted junk\n").is_err());
        assert_eq!(vm_list(b"").unwrap(), vec![]);
        assert!(vm_list(b"x class=A state=H extra=1\n").is_ok());
    }

    #[test]
    fn properties() {
        let p = property(b"default=False type=vm ").unwrap();
        assert_eq!(p.as_vm(), None);
        assert!(!p.is_default);
        let p = property(b"default=True type=int 400").unwrap();
        assert_eq!(p.as_int(), Some(400));
        let p = property(b"default=True type=str a b c").unwrap();
        assert_eq!(p.value, "a b c");
        assert!(property(b"default=Maybe type=int 1").is_err());
        assert!(property(b"default=True type=float 1").is_err());
        assert!(property(b"default=True").is_err());
        assert_eq!(property_default(b"").unwrap(), None);
        assert_eq!(
            property_default(b"type=vm ").unwrap(),
            Some((PropType::Vm, String::new()))
        );
        let all = property_all(b"a default=True type=str x\\ny\nb default=False type=bool True\n")
            .unwrap();
        assert_eq!(all["a"].value, "x\ny");
        assert_eq!(all["b"].as_bool(), Some(true));
        assert!(property_all(b"a default=True type=str \\q\n").is_err());
    }

    #[test]
    fn others() {
        assert_eq!(names(b"a\nb\n").unwrap(), vec!["a", "b"]);
        assert!(names(b"a b\n").is_err());
        assert!(names(b"\n\n").is_err());
        assert_eq!(key_values(b"pool=x\nsize=1\n").unwrap()["size"], "1");
        assert_eq!(
            current_state(b"mem=0 power_state=Halted").unwrap()["power_state"],
            "Halted"
        );
        assert!(current_state(b"mem=0").is_err());
        assert!(flag(b"1").unwrap());
        assert!(flag(b"2").is_err());
        let tok = format!("sha256:{}\nbody", "a".repeat(64));
        assert_eq!(policy_get(tok.as_bytes()).unwrap().1, b"body");
        assert!(policy_get(b"sha256:xyz\n").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = lines(&b);
            let _ = names(&b);
            let _ = vm_list(&b);
            let _ = property(&b);
            let _ = property_default(&b);
            let _ = property_all(&b);
            let _ = key_values(&b);
            let _ = current_state(&b);
            let _ = flag(&b);
            let _ = policy_get(&b);
        }
    }
}
