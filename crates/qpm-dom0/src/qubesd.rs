//! The few Admin API calls dom0 makes, over qubesd's own socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qpm_policy::{Domain, System};
use qpm_wire::{MAX_REPLY_LEN, Reply, Request};

/// A client of qubesd's socket, calling as dom0.
pub(crate) struct Qubesd {
    pub(crate) socket: PathBuf,
}

/// A failed call: qubesd's exception class and message, or why no answer came.
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) class: String,
    pub(crate) message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

impl std::error::Error for CallError {}

fn failed(class: &str, message: impl std::fmt::Display) -> CallError {
    CallError {
        class: class.to_owned(),
        message: message.to_string(),
    }
}

impl Qubesd {
    pub(crate) fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// One call; the success value as text.
    pub(crate) fn call(
        &self,
        method: &str,
        dest: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<String, CallError> {
        let req = Request::new(method, arg, "dom0", dest, payload)
            .encode()
            .map_err(|e| failed("ProtocolError", e))?;
        let io = |e: std::io::Error| {
            failed(
                "QubesDaemonCommunicationError",
                format!("{}: {e}", self.socket.display()),
            )
        };
        let mut s = UnixStream::connect(&self.socket).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(io)?;
        s.write_all(&req).map_err(io)?;
        s.shutdown(std::net::Shutdown::Write).map_err(io)?;
        let mut buf = Vec::new();
        s.take(MAX_REPLY_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
        match Reply::decode(&buf) {
            Ok(Reply::Success(v)) => Ok(String::from_utf8_lossy(&v).into_owned()),
            Ok(Reply::Exception { class, message, .. }) => Err(CallError { class, message }),
            Err(e) => Err(failed("QubesDaemonCommunicationError", format!("{e:?}"))),
        }
    }

    /// Names and classes of every qube (`admin.vm.List`).
    pub(crate) fn list(&self) -> Result<Vec<(String, String)>, CallError> {
        let text = self.call("admin.vm.List", "dom0", "", b"")?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let mut it = l.split(' ');
                let name = it.next()?.to_owned();
                let class = it.find_map(|kv| kv.strip_prefix("class="))?.to_owned();
                Some((name, class))
            })
            .collect())
    }

    pub(crate) fn tags(&self, qube: &str) -> Result<Vec<String>, CallError> {
        Ok(self
            .call("admin.vm.tag.List", qube, "", b"")?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// What the gatekeeper needs to know: every qube with its class and
    /// tags, and `template_for_dispvms` of the qubes some package claims.
    pub(crate) fn system(&self) -> Result<System, CallError> {
        let mut sys = System::new();
        for (name, class) in self.list()? {
            if class == "AdminVM" {
                sys.insert(Domain::new(name, class));
                continue;
            }
            let tags = self.tags(&name)?;
            let mut d = Domain::new(name.clone(), class);
            if tags.iter().any(|t| t.starts_with("qpm-pkg-")) {
                // templates and disposables have no `template_for_dispvms`
                let v = match self.call("admin.vm.property.Get", &name, "template_for_dispvms", b"")
                {
                    Ok(v) => v,
                    Err(e) if e.class == "QubesNoSuchPropertyError" => String::new(),
                    Err(e) => return Err(e),
                };
                d = d.with_template_for_dispvms(v.ends_with(" True"));
            }
            for t in tags {
                d = d.with_tag(t);
            }
            sys.insert(d);
        }
        Ok(sys)
    }
}
