//! Counting Admin API calls at the client, and the crash-injection hook the
//! crash tests use.
//!
//! [`Counting`] wraps any transport: every Admin API call and every qrexec
//! service call is counted as a read or a write ([`is_write`]). With
//! `crash_after = Some(n)`, the process aborts right after the `n`-th write
//! returns, which is how the tests kill an install after every single
//! mutating call.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use qpm_admin::transport::{ServiceConn, Transport, TransportError};

/// Calls made so far.
#[derive(Debug, Default)]
pub struct Counts {
    read: AtomicU64,
    write: AtomicU64,
}

impl Counts {
    /// Reads so far.
    pub fn reads(&self) -> u64 {
        self.read.load(Ordering::SeqCst)
    }

    /// Writes (mutating calls) so far.
    pub fn writes(&self) -> u64 {
        self.write.load(Ordering::SeqCst)
    }

    /// `{"read": N, "write": M}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"read": self.reads(), "write": self.writes()})
    }
}

/// Whether a call (Admin API method or qrexec service, without argument)
/// changes something in dom0.
pub fn is_write(method: &str) -> bool {
    const WRITE_SUFFIXES: &[&str] = &[
        ".Set",
        ".Remove",
        ".Reset",
        ".Resize",
        ".CloneTo",
        ".Start",
        ".Shutdown",
        ".Kill",
        ".Pause",
        ".Unpause",
        ".Reload",
        ".Replace",
    ];
    method.starts_with("admin.vm.Create")
        || method == "qpm.PolicySubmit"
        || method == "qpm.PolicyRemove"
        || WRITE_SUFFIXES.iter().any(|s| method.ends_with(s))
}

/// A transport that counts calls and can abort after the n-th write.
pub struct Counting {
    inner: Arc<dyn Transport>,
    counts: Arc<Counts>,
    crash_after: Option<u64>,
}

impl Counting {
    /// Wraps `inner`; `crash_after`: abort the process right after that
    /// many writes returned (tests only).
    pub fn new(inner: Arc<dyn Transport>, crash_after: Option<u64>) -> Self {
        Self {
            inner,
            counts: Arc::new(Counts::default()),
            crash_after,
        }
    }

    /// The shared counters.
    pub fn counts(&self) -> Arc<Counts> {
        Arc::clone(&self.counts)
    }
}

fn tick(counts: &Counts, write: bool, crash_after: Option<u64>) {
    if write {
        let n = counts.write.fetch_add(1, Ordering::SeqCst) + 1;
        if crash_after == Some(n) {
            // The crash tests: die like kill -9 would, right after the call.
            std::process::abort();
        }
    } else {
        counts.read.fetch_add(1, Ordering::SeqCst);
    }
}

impl Transport for Counting {
    fn admin(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let r = self.inner.admin(dest, method, arg, payload);
        tick(&self.counts, is_write(method), self.crash_after);
        r
    }

    fn admin_stream(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
    ) -> Result<Box<dyn Read + Send>, TransportError> {
        tick(&self.counts, false, None);
        self.inner.admin_stream(dest, method, arg)
    }

    fn service(&self, dest: &str, service_and_arg: &str) -> Result<ServiceConn, TransportError> {
        let mut conn = self.inner.service(dest, service_and_arg)?;
        let service = service_and_arg
            .split_once('+')
            .map_or(service_and_arg, |(s, _)| s);
        let write = is_write(service);
        let counts = Arc::clone(&self.counts);
        let crash_after = self.crash_after;
        let stdin = conn
            .stdin
            .take()
            .unwrap_or_else(|| Box::new(std::io::sink()));
        let stdout = std::mem::replace(&mut conn.stdout, Box::new(std::io::empty()));
        let stderr = std::mem::replace(&mut conn.stderr, Box::new(std::io::empty()));
        Ok(ServiceConn::new(
            stdin,
            stdout,
            stderr,
            Box::new(move || {
                let r = conn.wait();
                tick(&counts, write, crash_after);
                r
            }),
        ))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_calls() {
        for w in [
            "admin.vm.Create.AppVM",
            "admin.vm.property.Set",
            "admin.vm.property.Reset",
            "admin.vm.feature.Remove",
            "admin.vm.tag.Set",
            "admin.vm.Remove",
            "admin.vm.volume.CloneTo",
            "admin.vm.volume.Resize",
            "admin.vm.firewall.Set",
            "admin.vm.Shutdown",
            "qpm.PolicySubmit",
            "qpm.PolicyRemove",
            "policy.Replace",
        ] {
            assert!(is_write(w), "{w}");
        }
        for r in [
            "admin.vm.List",
            "admin.vm.property.GetAll",
            "admin.vm.tag.List",
            "admin.vm.feature.Get",
            "admin.vm.volume.CloneFrom",
            "qpm.PolicyGet",
            "policy.Get",
        ] {
            assert!(!is_write(r), "{r}");
        }
    }
}
