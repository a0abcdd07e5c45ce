//! The qubesd socket: one call per connection, exactly qubesd's framing.
//! The source in the header is trusted (as on qubesd's own socket, which only
//! dom0 and qrexec-daemon can reach); there is no policy on this socket.
//!
//! Robustness: every connection has its own thread, a size limit (64 KiB,
//! as qubesd), read and write timeouts, and a cap on concurrent connections;
//! a panic in one connection ends only that connection.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qpm_wire::{Event, MAX_REQUEST_LEN, Reply, Request};

use crate::api::{Call, Response};
use crate::model::ApiError;
use crate::sim::Sim;

/// Time a client has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client has to take a reply.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed immediately.
pub const MAX_CONNECTIONS: usize = 512;

/// Counts live connections.
#[derive(Debug, Default)]
pub struct ConnLimit(AtomicUsize);

/// Released when dropped.
pub struct ConnSlot<'a>(&'a ConnLimit);

impl ConnLimit {
    /// Takes a slot, or `None` when [`MAX_CONNECTIONS`] are busy.
    pub fn acquire(&self) -> Option<ConnSlot<'_>> {
        let prev = self.0.fetch_add(1, Ordering::SeqCst);
        if prev >= MAX_CONNECTIONS {
            self.0.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(ConnSlot(self))
    }
}

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections until `stop` is set (checked between connections;
/// wake the loop with a dummy connection).
pub fn serve_qubesd(sim: Arc<Sim>, listener: UnixListener, stop: Arc<AtomicBool>) {
    let limit = Arc::new(ConnLimit::default());
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let sim = sim.clone();
        let limit = limit.clone();
        let spawned = std::thread::Builder::new()
            .name("qubesd-conn".into())
            .spawn(move || {
                let Some(_slot) = limit.acquire() else {
                    tracing::warn!("too many connections; dropping one");
                    return;
                };
                handle_qubesd_conn(&sim, stream);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot spawn a connection thread: {e}");
        }
    }
}

/// Reads until EOF, at most `limit` bytes (more: `None`), within the
/// request deadline.
pub fn read_request(stream: &mut UnixStream, limit: usize) -> Option<Vec<u8>> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match stream.read(&mut chunk) {
            Ok(0) => return Some(buf),
            Ok(n) => {
                if buf.len() + n > limit {
                    tracing::warn!("request too long");
                    return None;
                }
                buf.extend_from_slice(chunk.get(..n)?);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn handle_qubesd_conn(sim: &Sim, mut stream: UnixStream) {
    let Some(raw) = read_request(&mut stream, MAX_REQUEST_LEN) else {
        return;
    };
    let req = match Request::decode(&raw) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("framing error: {e}");
            return;
        }
    };
    if !sim.latency.is_zero() {
        std::thread::sleep(sim.latency);
    }
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let handled = sim.call(Call {
        source: &req.source,
        method: &req.method,
        dest: &req.dest,
        arg: &req.arg,
        payload: &req.payload,
    });
    match handled.result {
        Ok(Response::Value(v)) => {
            let bytes = qpm_wire::encode_success(v.unwrap_or_default().as_bytes());
            let _ = stream.write_all(&bytes);
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(Response::Events { source, only }) => {
            let alive = |s: &UnixStream| socket_alive(s);
            let writer = stream.try_clone();
            if let Ok(mut w) = writer {
                stream_events(sim, &source, only.as_deref(), &mut w, || alive(&stream));
            }
        }
        Ok(Response::Stats { source, only }) => {
            if let Ok(mut w) = stream.try_clone() {
                stream_stats(sim, &source, only.as_deref(), &mut w, || {
                    socket_alive(&stream)
                });
            }
        }
        Err(ApiError::Exception { class, message }) => {
            let _ = stream.write_all(
                &Reply::Exception {
                    class,
                    traceback: String::new(),
                    message,
                }
                .encode(),
            );
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        Err(ApiError::Abort(why)) => {
            tracing::warn!("call aborted: {why}");
        }
    }
}

/// False once the peer has closed its end completely.
pub fn socket_alive(s: &impl AsFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(s, PollFlags::empty())];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(_) => {
            let r = fds[0].revents();
            !(r.contains(PollFlags::HUP) || r.contains(PollFlags::ERR))
        }
        Err(_) => false,
    }
}

/// Whether a non-dom0 `source` may receive `event` (the admin extension's
/// filter: policy for `admin.Events` with the event name as argument and the
/// subject, the `vm` argument, or `@adminvm` as target).
fn event_allowed(sim: &Sim, source: &str, event: &Event) -> bool {
    let guard = sim.lock();
    let sys = &guard.sys;
    let dom0 = sys.dom0().map(|d| sys.qube(d).name.clone());
    if dom0.as_deref() == Some(source) {
        return true;
    }
    let target = if !event.subject.is_empty() {
        event.subject.clone()
    } else if let Some(vm) = event.kwarg("vm") {
        vm.to_string()
    } else {
        "@adminvm".to_string()
    };
    let arg = format!("+{}", event.name.replace(':', "_"));
    sim.filter()
        .allows(sys, source, "admin.Events", &arg, &target)
}

/// Streams events to `out` until `alive` says the client left or a write
/// fails.
pub fn stream_events(
    sim: &Sim,
    source: &str,
    only: Option<&str>,
    out: &mut dyn Write,
    alive: impl Fn() -> bool,
) {
    let (id, rx) = sim.subscribe();
    if out
        .write_all(&Event::new("", "connection-established").encode())
        .is_err()
        || out.flush().is_err()
    {
        sim.unsubscribe(id);
        return;
    }
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(e) => {
                if let Some(vm) = only
                    && e.subject != vm
                {
                    continue;
                }
                if !event_allowed(sim, source, &e) {
                    continue;
                }
                if out.write_all(&e.encode()).is_err() || out.flush().is_err() {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if !alive() {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    sim.unsubscribe(id);
}

/// `admin.vm.Stats`: a `vm-stats` event per running qube every
/// `stats_interval` seconds.
pub fn stream_stats(
    sim: &Sim,
    source: &str,
    only: Option<&str>,
    out: &mut dyn Write,
    alive: impl Fn() -> bool,
) {
    if out
        .write_all(&Event::new("", "connection-established").encode())
        .is_err()
    {
        return;
    }
    loop {
        let (events, interval) = {
            let guard = sim.lock();
            let sys = &guard.sys;
            let interval = sys
                .global_get("stats_interval")
                .ok()
                .flatten()
                .map(|v| sys.show(&v))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(3)
                .clamp(1, 3600);
            let mut events = Vec::new();
            for qi in sys.sorted() {
                let q = sys.qube(qi);
                if !q.is_active() || only.is_some_and(|o| o != q.name) {
                    continue;
                }
                let mem = sys
                    .get(qi, "memory")
                    .ok()
                    .flatten()
                    .map(|v| sys.show(&v))
                    .unwrap_or_default();
                let kb = mem.parse::<u64>().unwrap_or(400) * 1024;
                events.push(
                    Event::new(&q.name, "vm-stats")
                        .with("memory_kb", kb.to_string())
                        .with("cpu_time", "1")
                        .with("cpu_usage", "1")
                        .with("cpu_usage_raw", "1"),
                );
            }
            (events, interval)
        };
        for e in events {
            if !event_allowed(sim, source, &e) {
                continue;
            }
            if out.write_all(&e.encode()).is_err() {
                return;
            }
        }
        let until = Instant::now() + Duration::from_secs(interval);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(250));
            if !alive() {
                return;
            }
        }
    }
}
