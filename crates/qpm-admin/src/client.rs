//! The typed client.

use std::collections::BTreeMap;
use std::sync::Arc;

use qpm_wire::{Reply, ReplyError};

use crate::error::{Error, ExceptionKind, PolicyAdminError, QubesError, Result};
use crate::events::EventStream;
use crate::parse::{self, ParseError, PropType, Property, QubeInfo};
use crate::transport::{ServiceConn, ServiceOutput, Transport, TransportError, run_service};

/// Calls in flight at once by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

/// Longest stdout kept from a generic service call made with
/// [`Client::call_service`].
pub const MAX_SERVICE_OUTPUT: usize = 64 * 1024 * 1024;

/// A typed Admin API client. Cheap to clone; usable from several threads.
#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
    max_in_flight: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.transport.describe())
            .finish()
    }
}

/// `pool=` or `pool:<volume>=` options of `CreateInPool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSpec {
    /// Every volume in this pool.
    All(String),
    /// Per volume (`root`, `private`, `volatile`, `kernel`).
    PerVolume(Vec<(String, String)>),
}

/// `admin.vm.Shutdown` options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownOptions {
    /// Also shut down qubes depending on it (`force`).
    pub force: bool,
    /// Wait until it is halted (`wait`).
    pub wait: bool,
}

fn valid_token(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
}

fn check(what: &'static str, s: &str, extra: &[u8], allow_empty: bool) -> Result<()> {
    if (s.is_empty() && allow_empty) || valid_token(s, extra) && s.len() <= 255 {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        what,
        value: s.escape_debug().to_string(),
    })
}

/// A qube reference: a name or `uuid:<uuid>`.
fn check_dest(dest: &str) -> Result<()> {
    check("qube", dest, b":", false)
}

impl Client {
    /// A client over `transport`.
    pub fn new(transport: impl Transport + 'static) -> Self {
        Self {
            transport: Arc::new(transport),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// A client over a shared transport.
    pub fn from_arc(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Sets the bound on calls in flight in [`Client::parallel`].
    #[must_use]
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// The bound on calls in flight.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The transport's description.
    pub fn describe(&self) -> String {
        self.transport.describe()
    }

    fn transport_error(&self, method: &str, dest: &str, e: TransportError) -> Error {
        match e {
            TransportError::Refused => Error::Refused {
                service: method.into(),
                dest: dest.into(),
            },
            TransportError::NoService => Error::NoSuchService {
                service: method.into(),
                dest: dest.into(),
            },
            TransportError::Failed { status, stderr } => Error::ServiceFailed {
                service: method.into(),
                dest: dest.into(),
                status,
                stderr,
            },
            TransportError::TooLarge { limit } => Error::Protocol {
                method: method.into(),
                dest: dest.into(),
                detail: format!("reply larger than {limit} bytes"),
            },
            TransportError::Io { what, source } => Error::io(what, source),
        }
    }

    /// One Admin API call; the success value as bytes.
    pub fn call_bytes(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        check_dest(dest)?;
        check("method", method, b"", false)?;
        check("argument", arg, b"+", true)?;
        let _span = tracing::debug_span!("admin", method, dest, arg).entered();
        let raw = self
            .transport
            .admin(dest, method, arg, payload)
            .map_err(|e| self.transport_error(method, dest, e))?;
        match Reply::decode(&raw) {
            Ok(Reply::Success(v)) => Ok(v),
            Ok(Reply::Exception { class, message, .. }) => Err(Error::Qubes {
                method: method.into(),
                dest: dest.into(),
                error: QubesError {
                    kind: ExceptionKind::from_class(&class),
                    class,
                    message,
                },
            }),
            Err(ReplyError::Empty) => Err(Error::Aborted {
                method: method.into(),
                dest: dest.into(),
            }),
            Err(e) => Err(Error::Protocol {
                method: method.into(),
                dest: dest.into(),
                detail: e.to_string(),
            }),
        }
    }

    /// One Admin API call; the success value as text.
    pub fn call(&self, dest: &str, method: &str, arg: &str, payload: &[u8]) -> Result<String> {
        let v = self.call_bytes(dest, method, arg, payload)?;
        String::from_utf8(v).map_err(|_| Error::Protocol {
            method: method.into(),
            dest: dest.into(),
            detail: "reply is not UTF-8".into(),
        })
    }

    fn parsed<T>(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
        payload: &[u8],
        f: impl FnOnce(&[u8]) -> Result<T, ParseError>,
    ) -> Result<T> {
        let v = self.call_bytes(dest, method, arg, payload)?;
        f(&v).map_err(|e| Error::Protocol {
            method: method.into(),
            dest: dest.into(),
            detail: e.to_string(),
        })
    }

    fn empty(&self, dest: &str, method: &str, arg: &str, payload: &[u8]) -> Result<()> {
        self.call_bytes(dest, method, arg, payload).map(|_| ())
    }

    // --- qubes ------------------------------------------------------------

    /// `admin.vm.List` (the qubes the caller may see).
    pub fn list_qubes(&self) -> Result<Vec<QubeInfo>> {
        self.parsed("dom0", "admin.vm.List", "", b"", parse::vm_list)
    }

    /// `admin.vm.List` on one qube.
    pub fn qube(&self, name: &str) -> Result<QubeInfo> {
        let mut v = self.parsed(name, "admin.vm.List", "", b"", parse::vm_list)?;
        if v.len() != 1 {
            return Err(Error::Protocol {
                method: "admin.vm.List".into(),
                dest: name.into(),
                detail: format!("{} entries for one qube", v.len()),
            });
        }
        Ok(v.remove(0))
    }

    /// `admin.vmclass.List`.
    pub fn vm_classes(&self) -> Result<Vec<String>> {
        self.parsed("dom0", "admin.vmclass.List", "", b"", parse::names)
    }

    /// `admin.vm.Create.<class>`; `template` for AppVM/DispVM (default
    /// template when `None`).
    pub fn create(
        &self,
        class: &str,
        name: &str,
        label: &str,
        template: Option<&str>,
    ) -> Result<()> {
        check("class", class, b"", false)?;
        check("qube name", name, b"", false)?;
        check("label", label, b"", false)?;
        let payload = format!("name={name} label={label}");
        self.empty(
            "dom0",
            &format!("admin.vm.Create.{class}"),
            template.unwrap_or(""),
            payload.as_bytes(),
        )
    }

    /// `admin.vm.CreateInPool.<class>`.
    pub fn create_in_pool(
        &self,
        class: &str,
        name: &str,
        label: &str,
        template: Option<&str>,
        pool: &PoolSpec,
    ) -> Result<()> {
        check("class", class, b"", false)?;
        check("qube name", name, b"", false)?;
        check("label", label, b"", false)?;
        let mut payload = format!("name={name} label={label}");
        match pool {
            PoolSpec::All(p) => {
                check("pool", p, b"", false)?;
                payload.push_str(&format!(" pool={p}"));
            }
            PoolSpec::PerVolume(v) => {
                for (vol, p) in v {
                    check("volume", vol, b"", false)?;
                    check("pool", p, b"", false)?;
                    payload.push_str(&format!(" pool:{vol}={p}"));
                }
            }
        }
        self.empty(
            "dom0",
            &format!("admin.vm.CreateInPool.{class}"),
            template.unwrap_or(""),
            payload.as_bytes(),
        )
    }

    /// `admin.vm.CreateDisposable` (from `base`, or the caller's
    /// `default_dispvm`); the new qube's name.
    pub fn create_disposable(&self, base: Option<&str>) -> Result<String> {
        self.call(base.unwrap_or("dom0"), "admin.vm.CreateDisposable", "", b"")
    }

    /// `admin.vm.Remove`.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.empty(name, "admin.vm.Remove", "", b"")
    }

    /// `admin.vm.Start`.
    pub fn start(&self, name: &str) -> Result<()> {
        self.empty(name, "admin.vm.Start", "", b"")
    }

    /// `admin.vm.Shutdown`.
    pub fn shutdown(&self, name: &str, opts: ShutdownOptions) -> Result<()> {
        let arg = match (opts.force, opts.wait) {
            (false, false) => "",
            (true, false) => "force",
            (false, true) => "wait",
            (true, true) => "force+wait",
        };
        self.empty(name, "admin.vm.Shutdown", arg, b"")
    }

    /// `admin.vm.Kill`.
    pub fn kill(&self, name: &str) -> Result<()> {
        self.empty(name, "admin.vm.Kill", "", b"")
    }

    /// `admin.vm.Pause`.
    pub fn pause(&self, name: &str) -> Result<()> {
        self.empty(name, "admin.vm.Pause", "", b"")
    }

    /// `admin.vm.Unpause`.
    pub fn unpause(&self, name: &str) -> Result<()> {
        self.empty(name, "admin.vm.Unpause", "", b"")
    }

    /// `admin.vm.CurrentState` (`mem`, `mem_static_max`, `cputime`,
    /// `power_state`).
    pub fn current_state(&self, name: &str) -> Result<BTreeMap<String, String>> {
        self.parsed(name, "admin.vm.CurrentState", "", b"", parse::current_state)
    }

    // --- properties -------------------------------------------------------

    fn prefix(qube: Option<&str>) -> (&str, &'static str) {
        match qube {
            Some(q) => (q, "admin.vm.property."),
            None => ("dom0", "admin.property."),
        }
    }

    /// Property names (`None`: global properties).
    pub fn property_list(&self, qube: Option<&str>) -> Result<Vec<String>> {
        let (d, p) = Self::prefix(qube);
        self.parsed(d, &format!("{p}List"), "", b"", parse::names)
    }

    /// One property.
    pub fn property(&self, qube: Option<&str>, name: &str) -> Result<Property> {
        check("property", name, b"", false)?;
        let (d, p) = Self::prefix(qube);
        self.parsed(d, &format!("{p}Get"), name, b"", parse::property)
    }

    /// All properties in one call (denied by Qubes' default policy; fall back
    /// to [`Client::property`] when refused).
    pub fn properties(&self, qube: Option<&str>) -> Result<BTreeMap<String, Property>> {
        let (d, p) = Self::prefix(qube);
        self.parsed(d, &format!("{p}GetAll"), "", b"", parse::property_all)
    }

    /// The default a property would take (`None`: it has none).
    pub fn property_default(
        &self,
        qube: Option<&str>,
        name: &str,
    ) -> Result<Option<(PropType, String)>> {
        check("property", name, b"", false)?;
        let (d, p) = Self::prefix(qube);
        self.parsed(
            d,
            &format!("{p}GetDefault"),
            name,
            b"",
            parse::property_default,
        )
    }

    /// Sets a property (`""` sets a qube-valued property to none).
    pub fn set_property(&self, qube: Option<&str>, name: &str, value: &str) -> Result<()> {
        check("property", name, b"", false)?;
        let (d, p) = Self::prefix(qube);
        self.empty(d, &format!("{p}Set"), name, value.as_bytes())
    }

    /// Resets a property to its default.
    pub fn reset_property(&self, qube: Option<&str>, name: &str) -> Result<()> {
        check("property", name, b"", false)?;
        let (d, p) = Self::prefix(qube);
        self.empty(d, &format!("{p}Reset"), name, b"")
    }

    /// A property's help text.
    pub fn property_help(&self, qube: Option<&str>, name: &str) -> Result<String> {
        check("property", name, b"", false)?;
        let (d, p) = Self::prefix(qube);
        self.call(d, &format!("{p}Help"), name, b"")
    }

    // --- features, tags, labels --------------------------------------------

    /// Feature names.
    pub fn features(&self, qube: &str) -> Result<Vec<String>> {
        self.parsed(qube, "admin.vm.feature.List", "", b"", parse::names)
    }

    fn feature_call(&self, qube: &str, method: &str, name: &str) -> Result<Option<String>> {
        check("feature", name, b"", false)?;
        match self.call(qube, method, name, b"") {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is(ExceptionKind::FeatureNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A feature's value (`None`: not set).
    pub fn feature(&self, qube: &str, name: &str) -> Result<Option<String>> {
        self.feature_call(qube, "admin.vm.feature.Get", name)
    }

    /// A feature, falling back along the template chain.
    pub fn feature_check_with_template(&self, qube: &str, name: &str) -> Result<Option<String>> {
        self.feature_call(qube, "admin.vm.feature.CheckWithTemplate", name)
    }

    /// A feature, falling back along the netvm chain.
    pub fn feature_check_with_netvm(&self, qube: &str, name: &str) -> Result<Option<String>> {
        self.feature_call(qube, "admin.vm.feature.CheckWithNetvm", name)
    }

    /// A feature, falling back to dom0's.
    pub fn feature_check_with_adminvm(&self, qube: &str, name: &str) -> Result<Option<String>> {
        self.feature_call(qube, "admin.vm.feature.CheckWithAdminVM", name)
    }

    /// Sets a feature (printable ASCII; `""` means false by convention).
    pub fn set_feature(&self, qube: &str, name: &str, value: &str) -> Result<()> {
        check("feature", name, b"", false)?;
        self.empty(qube, "admin.vm.feature.Set", name, value.as_bytes())
    }

    /// Removes a feature; `false` if it was not set.
    pub fn remove_feature(&self, qube: &str, name: &str) -> Result<bool> {
        check("feature", name, b"", false)?;
        match self.empty(qube, "admin.vm.feature.Remove", name, b"") {
            Ok(()) => Ok(true),
            Err(e) if e.is(ExceptionKind::FeatureNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Tags, sorted.
    pub fn tags(&self, qube: &str) -> Result<Vec<String>> {
        self.parsed(qube, "admin.vm.tag.List", "", b"", parse::names)
    }

    /// Whether the qube has a tag.
    pub fn has_tag(&self, qube: &str, tag: &str) -> Result<bool> {
        check("tag", tag, b"", false)?;
        self.parsed(qube, "admin.vm.tag.Get", tag, b"", parse::flag)
    }

    /// Adds a tag (idempotent).
    pub fn add_tag(&self, qube: &str, tag: &str) -> Result<()> {
        check("tag", tag, b"", false)?;
        self.empty(qube, "admin.vm.tag.Set", tag, b"")
    }

    /// Removes a tag; `false` if it was not set.
    pub fn remove_tag(&self, qube: &str, tag: &str) -> Result<bool> {
        check("tag", tag, b"", false)?;
        match self.empty(qube, "admin.vm.tag.Remove", tag, b"") {
            Ok(()) => Ok(true),
            Err(e) if e.is(ExceptionKind::TagNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Label names in index order.
    pub fn labels(&self) -> Result<Vec<String>> {
        self.parsed("dom0", "admin.label.List", "", b"", parse::names)
    }

    /// A label's colour (`0xRRGGBB`).
    pub fn label_color(&self, label: &str) -> Result<String> {
        check("label", label, b"", false)?;
        self.call("dom0", "admin.label.Get", label, b"")
    }

    /// A label's index.
    pub fn label_index(&self, label: &str) -> Result<u32> {
        check("label", label, b"", false)?;
        let v = self.call("dom0", "admin.label.Index", label, b"")?;
        v.parse().map_err(|_| Error::Protocol {
            method: "admin.label.Index".into(),
            dest: "dom0".into(),
            detail: format!("not a number: `{}`", v.escape_debug()),
        })
    }

    /// Creates a label.
    pub fn create_label(&self, label: &str, color: &str) -> Result<()> {
        check("label", label, b"", false)?;
        self.empty("dom0", "admin.label.Create", label, color.as_bytes())
    }

    /// Removes a label.
    pub fn remove_label(&self, label: &str) -> Result<()> {
        check("label", label, b"", false)?;
        self.empty("dom0", "admin.label.Remove", label, b"")
    }

    /// Storage pools.
    pub fn pools(&self) -> Result<Vec<String>> {
        self.parsed("dom0", "admin.pool.List", "", b"", parse::names)
    }

    // --- firewall, volumes, notes -----------------------------------------

    /// Firewall rules, one API line each (`action=accept proto=tcp ...`).
    pub fn firewall(&self, qube: &str) -> Result<Vec<String>> {
        self.parsed(qube, "admin.vm.firewall.Get", "", b"", parse::lines)
    }

    /// Replaces the firewall rules.
    pub fn set_firewall(&self, qube: &str, rules: &[String]) -> Result<()> {
        let mut payload = String::new();
        for r in rules {
            if r.contains('\n') {
                return Err(Error::InvalidArgument {
                    what: "firewall rule",
                    value: r.escape_debug().to_string(),
                });
            }
            payload.push_str(r);
            payload.push('\n');
        }
        self.empty(qube, "admin.vm.firewall.Set", "", payload.as_bytes())
    }

    /// Volume names.
    pub fn volumes(&self, qube: &str) -> Result<Vec<String>> {
        self.parsed(qube, "admin.vm.volume.List", "", b"", parse::names)
    }

    /// `admin.vm.volume.Info` as key/value pairs.
    pub fn volume_info(&self, qube: &str, volume: &str) -> Result<BTreeMap<String, String>> {
        check("volume", volume, b"", false)?;
        self.parsed(qube, "admin.vm.volume.Info", volume, b"", parse::key_values)
    }

    /// Starts a volume copy; the token for [`Client::volume_clone_to`].
    pub fn volume_clone_from(&self, qube: &str, volume: &str) -> Result<String> {
        check("volume", volume, b"", false)?;
        let t = self.call(qube, "admin.vm.volume.CloneFrom", volume, b"")?;
        if !valid_token(&t, b"") {
            return Err(Error::Protocol {
                method: "admin.vm.volume.CloneFrom".into(),
                dest: qube.into(),
                detail: "malformed token".into(),
            });
        }
        Ok(t)
    }

    /// Completes a volume copy onto `qube`'s `volume`.
    pub fn volume_clone_to(&self, qube: &str, volume: &str, token: &str) -> Result<()> {
        check("volume", volume, b"", false)?;
        self.empty(qube, "admin.vm.volume.CloneTo", volume, token.as_bytes())
    }

    /// Copies every volume of `src` onto the same volume of `dst` (what
    /// `qvm-clone` does after creating the qube).
    pub fn clone_volumes(&self, src: &str, dst: &str) -> Result<()> {
        for v in self.volumes(src)? {
            if v == "kernel" {
                continue;
            }
            let t = self.volume_clone_from(src, &v)?;
            self.volume_clone_to(dst, &v, &t)?;
        }
        Ok(())
    }

    /// Grows a volume to `size` bytes.
    pub fn volume_resize(&self, qube: &str, volume: &str, size: u64) -> Result<()> {
        check("volume", volume, b"", false)?;
        self.empty(
            qube,
            "admin.vm.volume.Resize",
            volume,
            size.to_string().as_bytes(),
        )
    }

    /// The qube's notes.
    pub fn notes(&self, qube: &str) -> Result<String> {
        self.call(qube, "admin.vm.notes.Get", "", b"")
    }

    /// Sets the qube's notes.
    pub fn set_notes(&self, qube: &str, text: &str) -> Result<()> {
        self.empty(qube, "admin.vm.notes.Set", "", text.as_bytes())
    }

    // --- events -----------------------------------------------------------

    /// Subscribes to events (`None`: everything the caller may see).
    pub fn events(&self, qube: Option<&str>) -> Result<EventStream> {
        let dest = qube.unwrap_or("dom0");
        check_dest(dest)?;
        let r = self
            .transport
            .admin_stream(dest, "admin.Events", "")
            .map_err(|e| self.transport_error("admin.Events", dest, e))?;
        Ok(EventStream::new(r, dest))
    }

    // --- qrexec services --------------------------------------------------

    /// Opens any qrexec service call (`qpm.SyncConfig`, ...).
    pub fn service(&self, dest: &str, service_and_arg: &str) -> Result<ServiceConn> {
        check_dest(dest).or_else(|_| check("target", dest, b"@:", false))?;
        check("service", service_and_arg, b"+", false)?;
        self.transport
            .service(dest, service_and_arg)
            .map_err(|e| self.transport_error(service_and_arg, dest, e))
    }

    /// Runs a qrexec service to completion with `input`.
    pub fn call_service(
        &self,
        dest: &str,
        service_and_arg: &str,
        input: &[u8],
    ) -> Result<ServiceOutput> {
        let conn = self.service(dest, service_and_arg)?;
        run_service(conn, input, MAX_SERVICE_OUTPUT)
            .map_err(|e| self.transport_error(service_and_arg, dest, e))
    }

    fn policy_call(&self, service: &str, arg: &str, input: &[u8]) -> Result<Vec<u8>> {
        let svc = if arg.is_empty() {
            service.to_string()
        } else {
            format!("{service}+{arg}")
        };
        let out = self.call_service("dom0", &svc, input)?;
        match out.status {
            0 => Ok(out.stdout),
            126 => Err(Error::Refused {
                service: svc,
                dest: "dom0".into(),
            }),
            127 => Err(Error::NoSuchService {
                service: svc,
                dest: "dom0".into(),
            }),
            _ => {
                let text = String::from_utf8_lossy(&out.stderr);
                let (class, message) = text
                    .trim_end()
                    .split_once(' ')
                    .unwrap_or((text.trim_end(), ""));
                let class = if class.starts_with("PolicyAdmin") {
                    class
                } else {
                    "PolicyAdminException"
                };
                Err(Error::PolicyAdmin {
                    service: svc,
                    error: PolicyAdminError {
                        class: class.to_string(),
                        message: message.to_string(),
                    },
                })
            }
        }
    }

    fn policy_name(name: &str) -> Result<()> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::InvalidArgument {
                what: "policy file name",
                value: name.escape_debug().to_string(),
            });
        }
        Ok(())
    }

    /// `policy.List` (or `policy.include.List`).
    pub fn policy_list(&self, include: bool) -> Result<Vec<String>> {
        let svc = if include {
            "policy.include.List"
        } else {
            "policy.List"
        };
        let out = self.policy_call(svc, "", b"")?;
        parse::names(&out).map_err(|e| Error::Protocol {
            method: svc.into(),
            dest: "dom0".into(),
            detail: e.to_string(),
        })
    }

    /// `policy.Get`: the token (`sha256:...`) and the content.
    pub fn policy_get(&self, name: &str, include: bool) -> Result<(String, Vec<u8>)> {
        Self::policy_name(name)?;
        let svc = if include {
            "policy.include.Get"
        } else {
            "policy.Get"
        };
        let out = self.policy_call(svc, name, b"")?;
        parse::policy_get(&out).map_err(|e| Error::Protocol {
            method: svc.into(),
            dest: "dom0".into(),
            detail: e.to_string(),
        })
    }

    /// `policy.Replace` with a token: `new`, `any`, or a `sha256:` token
    /// from [`Client::policy_get`].
    pub fn policy_replace(
        &self,
        name: &str,
        include: bool,
        token: &str,
        content: &[u8],
    ) -> Result<()> {
        Self::policy_name(name)?;
        let svc = if include {
            "policy.include.Replace"
        } else {
            "policy.Replace"
        };
        let mut payload = token.as_bytes().to_vec();
        payload.push(b'\n');
        payload.extend_from_slice(content);
        self.policy_call(svc, name, &payload).map(|_| ())
    }

    /// `policy.Remove` with a token.
    pub fn policy_remove(&self, name: &str, include: bool, token: &str) -> Result<()> {
        Self::policy_name(name)?;
        let svc = if include {
            "policy.include.Remove"
        } else {
            "policy.Remove"
        };
        self.policy_call(svc, name, token.as_bytes()).map(|_| ())
    }

    /// `policy.GetFiles`: files with rules for `service`.
    pub fn policy_files(&self, service: &str) -> Result<Vec<String>> {
        check("service", service, b"", false)?;
        let out = self.policy_call("policy.GetFiles", service, b"")?;
        parse::lines(&out).map_err(|e| Error::Protocol {
            method: "policy.GetFiles".into(),
            dest: "dom0".into(),
            detail: e.to_string(),
        })
    }

    // --- concurrency ------------------------------------------------------

    /// Runs `f` on every item with at most [`max_in_flight`] calls at once;
    /// results in item order.
    ///
    /// [`max_in_flight`]: Client::max_in_flight
    pub fn parallel<T, R, F>(&self, items: Vec<T>, f: F) -> Vec<R>
    where
        T: Send,
        R: Send,
        F: Fn(&Client, T) -> R + Sync,
    {
        let n = items.len();
        let workers = self.max_in_flight.min(n).max(1);
        let queue: std::sync::Mutex<std::vec::IntoIter<(usize, T)>> = std::sync::Mutex::new(
            items
                .into_iter()
                .enumerate()
                .collect::<Vec<_>>()
                .into_iter(),
        );
        let results: std::sync::Mutex<Vec<Option<R>>> =
            std::sync::Mutex::new((0..n).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let Some((i, item)) = next else { break };
                        let r = f(self, item);
                        if let Some(slot) =
                            results.lock().unwrap_or_else(|e| e.into_inner()).get_mut(i)
                        {
                            *slot = Some(r);
                        }
                    }
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Mutex;

    type Answer = Box<dyn Fn(&str, &str, &str) -> Result<Vec<u8>, TransportError> + Send + Sync>;

    /// A transport answering from a function, recording the calls.
    struct Fake {
        calls: Mutex<Vec<(String, String)>>,
        reply: Answer,
    }

    impl Transport for Fake {
        fn admin(
            &self,
            dest: &str,
            method: &str,
            arg: &str,
            payload: &[u8],
        ) -> Result<Vec<u8>, TransportError> {
            let _ = payload;
            self.calls
                .lock()
                .unwrap()
                .push((dest.into(), method.into()));
            (self.reply)(dest, method, arg)
        }
        fn admin_stream(
            &self,
            _: &str,
            _: &str,
            _: &str,
        ) -> Result<Box<dyn Read + Send>, TransportError> {
            Ok(Box::new(&b"1\0\0connection-established\0\0"[..]))
        }
        fn service(&self, _: &str, _: &str) -> Result<ServiceConn, TransportError> {
            Err(TransportError::NoService)
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn fake(
        f: impl Fn(&str, &str, &str) -> Result<Vec<u8>, TransportError> + Send + Sync + 'static,
    ) -> Client {
        Client::new(Fake {
            calls: Mutex::new(Vec::new()),
            reply: Box::new(f),
        })
    }

    #[test]
    fn typed_errors() {
        let c = fake(|_, m, _| match m {
            "admin.vm.feature.Get" => {
                Ok(b"2\0QubesFeatureNotFoundError\0\0Feature not set\0".to_vec())
            }
            "admin.vm.Remove" => Ok(Vec::new()),
            "admin.vm.Start" => Err(TransportError::Refused),
            "admin.vm.property.Set" => Ok(b"2\0QubesPropertyValueError\0\0bad\0".to_vec()),
            "admin.vm.List" => Ok(b"0\0work class=AppVM state=Halted uuid=x\n".to_vec()),
            "admin.vm.tag.Get" => Ok(b"0\0maybe".to_vec()),
            _ => Ok(b"junk".to_vec()),
        });
        assert_eq!(c.feature("work", "x").unwrap(), None);
        assert!(matches!(c.remove("work"), Err(Error::Aborted { .. })));
        assert!(matches!(c.start("work"), Err(Error::Refused { .. })));
        let e = c.set_property(Some("work"), "netvm", "x").unwrap_err();
        assert!(e.is(ExceptionKind::Value));
        assert!(e.is(ExceptionKind::PropertyValue));
        assert_eq!(c.qube("work").unwrap().class, "AppVM");
        assert!(matches!(
            c.has_tag("work", "t"),
            Err(Error::Protocol { .. })
        ));
        assert!(matches!(c.labels(), Err(Error::Protocol { .. })));
        assert!(matches!(
            c.start("bad name"),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            c.property(Some("work"), "a b"),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn parallel_keeps_order_and_bounds() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NOW: AtomicUsize = AtomicUsize::new(0);
        static MAX: AtomicUsize = AtomicUsize::new(0);
        let c = fake(|d, _, _| {
            let n = NOW.fetch_add(1, Ordering::SeqCst) + 1;
            MAX.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            NOW.fetch_sub(1, Ordering::SeqCst);
            Ok(format!("0\0{d}").into_bytes())
        })
        .with_max_in_flight(3);
        let names: Vec<String> = (0..20).map(|i| format!("q{i}")).collect();
        let out = c.parallel(names.clone(), |c, n| {
            c.call(&n, "admin.vm.CurrentState", "", b"").unwrap()
        });
        assert_eq!(out, names);
        let max = MAX.load(Ordering::SeqCst);
        assert!((2..=3).contains(&max), "{max} calls in flight");
    }
}
