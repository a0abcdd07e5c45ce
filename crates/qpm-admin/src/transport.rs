//! How calls reach dom0: `qrexec-client-vm` in a qube, qubesd's socket in
//! dom0, or the simulator's router.

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qpm_wire::MAX_REPLY_LEN;
use qpm_wire::router::{RouterRequest, RouterStatus};

/// An open qrexec service call: write its stdin, read its stdout and stderr,
/// then [`wait`](ServiceConn::wait) for the exit status.
pub struct ServiceConn {
    /// The service's stdin (drop it to send EOF).
    pub stdin: Option<Box<dyn Write + Send>>,
    /// The service's stdout.
    pub stdout: Box<dyn Read + Send>,
    /// The service's stderr.
    pub stderr: Box<dyn Read + Send>,
    waiter: Box<dyn FnOnce() -> io::Result<i32> + Send>,
}

impl std::fmt::Debug for ServiceConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConn").finish_non_exhaustive()
    }
}

impl ServiceConn {
    /// Builds a connection from its parts.
    pub fn new(
        stdin: Box<dyn Write + Send>,
        stdout: Box<dyn Read + Send>,
        stderr: Box<dyn Read + Send>,
        waiter: Box<dyn FnOnce() -> io::Result<i32> + Send>,
    ) -> Self {
        Self {
            stdin: Some(stdin),
            stdout,
            stderr,
            waiter,
        }
    }

    /// Closes stdin (if still open) and waits for the exit status (qrexec's
    /// 126 refused, 127 no such service, or the service's own).
    pub fn wait(mut self) -> io::Result<i32> {
        drop(self.stdin.take());
        (self.waiter)()
    }
}

/// What a finished service call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOutput {
    /// Exit status.
    pub status: i32,
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr (bounded).
    pub stderr: Vec<u8>,
}

/// Longest stderr kept from a service.
pub const MAX_STDERR: u64 = 64 * 1024;

/// A way to reach dom0 (and other qubes, for qrexec services).
pub trait Transport: Send + Sync {
    /// One Admin API call; everything qubesd sent (the raw reply), or
    /// nothing for an aborted call. Implementations map a refused qrexec
    /// call to [`TransportError::Refused`].
    fn admin(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, TransportError>;

    /// A streaming Admin API call (`admin.Events`): the raw byte stream.
    fn admin_stream(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
    ) -> Result<Box<dyn Read + Send>, TransportError>;

    /// Opens a qrexec service call to `dest`.
    fn service(&self, dest: &str, service_and_arg: &str) -> Result<ServiceConn, TransportError>;

    /// A short description (`qrexec-client-vm`, `qubesd socket /var/run/...`).
    fn describe(&self) -> String;
}

/// Why a transport could not deliver a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// qrexec refused the call (exit 126).
    #[error("refused by qrexec policy")]
    Refused,
    /// No such service (exit 127).
    #[error("no such service")]
    NoService,
    /// The client exited with another failure status.
    #[error("exit status {status}")]
    Failed {
        /// Status.
        status: i32,
        /// Its stderr.
        stderr: String,
    },
    /// The reply is larger than allowed.
    #[error("reply larger than {limit} bytes")]
    TooLarge {
        /// Limit.
        limit: usize,
    },
    /// I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TransportError {
    let what = what.into();
    move |source| TransportError::Io { what, source }
}

/// Reads everything, at most `limit` bytes.
fn read_limited(r: &mut dyn Read, limit: usize) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(io_err("reading the reply"))?;
    if out.len() > limit {
        return Err(TransportError::TooLarge { limit });
    }
    Ok(out)
}

/// Runs a service call to completion with `input`; stdout bounded by `limit`.
pub fn run_service(
    conn: ServiceConn,
    input: &[u8],
    limit: usize,
) -> Result<ServiceOutput, TransportError> {
    let ServiceConn {
        stdin,
        mut stdout,
        stderr,
        waiter,
    } = conn;
    let input = input.to_vec();
    std::thread::scope(|s| {
        let writer = s.spawn(move || {
            if let Some(mut w) = stdin {
                // a service that does not read its input is not an error here
                let _ = w.write_all(&input);
            }
        });
        let err_reader = s.spawn(move || {
            let mut e = Vec::new();
            let _ = stderr.take(MAX_STDERR).read_to_end(&mut e);
            e
        });
        let out = read_limited(&mut *stdout, limit);
        let _ = writer.join();
        let err = err_reader.join().unwrap_or_default();
        let status = waiter().map_err(io_err("waiting for the service"))?;
        Ok(ServiceOutput {
            status,
            stdout: out?,
            stderr: err,
        })
    })
}

/// `qrexec-client-vm DEST METHOD+ARG` (in a qube).
#[derive(Debug, Clone)]
pub struct QrexecClientVm {
    program: PathBuf,
    env: Vec<(String, String)>,
}

impl QrexecClientVm {
    /// Uses `program` (normally `/usr/bin/qrexec-client-vm` or the one on PATH).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable for the client processes (e.g. the
    /// simulator's `QPM_SIM_QUBE`).
    #[must_use]
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn spawn(&self, dest: &str, service: &str) -> Result<Child, TransportError> {
        Command::new(&self.program)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("--")
            .arg(dest)
            .arg(service)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("running {}", self.program.display())))
    }
}

fn child_conn(mut child: Child) -> Result<ServiceConn, TransportError> {
    let (Some(i), Some(o), Some(e)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(TransportError::Io {
            what: "service pipes".into(),
            source: io::Error::other("missing pipe"),
        });
    };
    Ok(ServiceConn::new(
        Box::new(i),
        Box::new(o),
        Box::new(e),
        Box::new(move || {
            use std::os::unix::process::ExitStatusExt;
            let st = child.wait()?;
            Ok(st
                .code()
                .or_else(|| st.signal().map(|s| 128 + s))
                .unwrap_or(1))
        }),
    ))
}

fn map_status(out: ServiceOutput) -> Result<Vec<u8>, TransportError> {
    match out.status {
        0 => Ok(out.stdout),
        126 => Err(TransportError::Refused),
        127 => Err(TransportError::NoService),
        s => Err(TransportError::Failed {
            status: s,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}

/// The qrexec service name of a call: `METHOD` or `METHOD+ARG`.
fn service_name(method: &str, arg: &str) -> String {
    if arg.is_empty() {
        method.to_owned()
    } else {
        format!("{method}+{arg}")
    }
}

impl Transport for QrexecClientVm {
    fn admin(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let svc = service_name(method, arg);
        let conn = child_conn(self.spawn(dest, &svc)?)?;
        map_status(run_service(conn, payload, MAX_REPLY_LEN)?)
    }

    fn admin_stream(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
    ) -> Result<Box<dyn Read + Send>, TransportError> {
        let svc = service_name(method, arg);
        let mut child = self.spawn(dest, &svc)?;
        drop(child.stdin.take());
        let out = child.stdout.take().ok_or_else(|| TransportError::Io {
            what: "event stream".into(),
            source: io::Error::other("missing pipe"),
        })?;
        Ok(Box::new(ChildReader { child, out }))
    }

    fn service(&self, dest: &str, service_and_arg: &str) -> Result<ServiceConn, TransportError> {
        child_conn(self.spawn(dest, service_and_arg)?)
    }

    fn describe(&self) -> String {
        format!("qrexec ({})", self.program.display())
    }
}

/// Keeps the child alive while its output is read; kills it when dropped.
struct ChildReader {
    child: Child,
    out: std::process::ChildStdout,
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.out.read(buf)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// qubesd's socket (in dom0): the source is `dom0`.
#[derive(Debug, Clone)]
pub struct QubesdSocket {
    path: PathBuf,
    source: String,
}

impl QubesdSocket {
    /// The socket at `path` (normally `/var/run/qubesd.sock`), calling as dom0.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            source: "dom0".into(),
        }
    }

    /// Same socket, another source (only meaningful against a simulator's
    /// qubesd socket, which trusts the header as qubesd does).
    pub fn with_source(mut self, source: &str) -> Self {
        self.source = source.to_string();
        self
    }

    fn connect(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<UnixStream, TransportError> {
        let req = qpm_wire::Request::new(method, arg, &self.source, dest, payload)
            .encode()
            .map_err(|e| TransportError::Io {
                what: "encoding the request".into(),
                source: io::Error::other(e),
            })?;
        let mut s = UnixStream::connect(&self.path)
            .map_err(io_err(format!("connecting to {}", self.path.display())))?;
        s.write_all(&req).map_err(io_err("sending the request"))?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(io_err("sending the request"))?;
        Ok(s)
    }
}

impl Transport for QubesdSocket {
    fn admin(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let mut s = self.connect(dest, method, arg, payload)?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
        match read_limited(&mut s, MAX_REPLY_LEN) {
            // an aborted call may end with a reset
            Err(TransportError::Io { source, .. })
                if source.kind() == io::ErrorKind::ConnectionReset =>
            {
                Ok(Vec::new())
            }
            other => other,
        }
    }

    fn admin_stream(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
    ) -> Result<Box<dyn Read + Send>, TransportError> {
        Ok(Box::new(self.connect(dest, method, arg, b"")?))
    }

    fn service(&self, dest: &str, service_and_arg: &str) -> Result<ServiceConn, TransportError> {
        // in dom0: dom0 services are executables in /etc/qubes-rpc; other
        // qubes are reached with qrexec-client
        if dest == "dom0" {
            let (svc, arg) = service_and_arg
                .split_once('+')
                .unwrap_or((service_and_arg, ""));
            let exe = Path::new("/etc/qubes-rpc").join(svc);
            let mut cmd = Command::new(&exe);
            if !arg.is_empty() {
                cmd.arg(arg);
            }
            let child = cmd
                .env("QREXEC_REMOTE_DOMAIN", "dom0")
                .env("QREXEC_SERVICE_FULL_NAME", service_and_arg)
                .env("QREXEC_SERVICE_ARGUMENT", arg)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(io_err(format!("running {}", exe.display())))?;
            return child_conn(child);
        }
        let child = Command::new("qrexec-client")
            .arg("-d")
            .arg(dest)
            .arg(format!("DEFAULT:QUBESRPC {service_and_arg} dom0"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("running qrexec-client"))?;
        child_conn(child)
    }

    fn describe(&self) -> String {
        format!("qubesd socket {}", self.path.display())
    }
}

/// The simulator's qrexec router, calling as a simulated qube.
#[derive(Debug, Clone)]
pub struct Simulator {
    socket: PathBuf,
    caller: String,
}

impl Simulator {
    /// The router socket of a simulator state directory, calling as `caller`.
    pub fn new(router_socket: impl Into<PathBuf>, caller: &str) -> Self {
        Self {
            socket: router_socket.into(),
            caller: caller.to_string(),
        }
    }

    /// The qube this transport calls as.
    pub fn caller(&self) -> &str {
        &self.caller
    }

    /// Sends a control command to the simulator (`ping`, `status`,
    /// `shutdown`); its one-line answer.
    pub fn control(socket: &Path, cmd: &str) -> io::Result<String> {
        let req = RouterRequest::Control(cmd.to_string())
            .encode()
            .map_err(io::Error::other)?;
        let sock = UnixStream::connect(socket)?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        send_with_fds(&sock, &req, &[])?;
        sock.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        (&sock).take(1 << 20).read_to_string(&mut answer)?;
        Ok(answer)
    }
}

/// Sends `len (u32 LE) + body` with `fds` attached (the router's framing).
fn send_with_fds(sock: &UnixStream, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut msg = len.to_le_bytes().to_vec();
    msg.extend_from_slice(body);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many file descriptors"));
    }
    let mut sent = sendmsg(
        sock,
        &[IoSlice::new(&msg)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    while sent < msg.len() {
        let mut none = SendAncillaryBuffer::default();
        let n = sendmsg(
            sock,
            &[IoSlice::new(msg.get(sent..).unwrap_or_default())],
            &mut none,
            SendFlags::NOSIGNAL,
        )?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

impl Simulator {
    fn open(&self, dest: &str, service_and_arg: &str) -> Result<ServiceConn, TransportError> {
        let req = RouterRequest::Call {
            source: self.caller.clone(),
            target: dest.to_string(),
            service_and_arg: service_and_arg.to_string(),
        }
        .encode()
        .map_err(|e| TransportError::Io {
            what: "encoding the call".into(),
            source: io::Error::other(e),
        })?;
        let (in_r, in_w) = io::pipe().map_err(io_err("pipe"))?;
        let (out_r, out_w) = io::pipe().map_err(io_err("pipe"))?;
        let (err_r, err_w) = io::pipe().map_err(io_err("pipe"))?;
        let sock = UnixStream::connect(&self.socket).map_err(io_err(format!(
            "connecting to the simulator at {}",
            self.socket.display()
        )))?;
        send_with_fds(&sock, &req, &[in_r.as_fd(), out_w.as_fd(), err_w.as_fd()])
            .map_err(io_err("sending the call"))?;
        drop((in_r, out_w, err_w));
        let _ = sock.shutdown(std::net::Shutdown::Write);
        Ok(ServiceConn::new(
            Box::new(in_w),
            Box::new(out_r),
            Box::new(err_r),
            Box::new(move || {
                let mut answer = Vec::new();
                (&sock).take(64).read_to_end(&mut answer)?;
                RouterStatus::decode(&answer)
                    .map(|s| s.0)
                    .map_err(|e| io::Error::other(format!("router: {e}")))
            }),
        ))
    }
}

impl Transport for Simulator {
    fn admin(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let svc = service_name(method, arg);
        map_status(run_service(self.open(dest, &svc)?, payload, MAX_REPLY_LEN)?)
    }

    fn admin_stream(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
    ) -> Result<Box<dyn Read + Send>, TransportError> {
        let svc = service_name(method, arg);
        let mut conn = self.open(dest, &svc)?;
        drop(conn.stdin.take());
        // the waiter (holding the router connection) lives as long as the
        // reader: dropping both ends the subscription
        Ok(Box::new(StreamWithConn { conn: Some(conn) }))
    }

    fn service(&self, dest: &str, service_and_arg: &str) -> Result<ServiceConn, TransportError> {
        self.open(dest, service_and_arg)
    }

    fn describe(&self) -> String {
        format!("simulator {} as {}", self.socket.display(), self.caller)
    }
}

struct StreamWithConn {
    conn: Option<ServiceConn>,
}

impl Read for StreamWithConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.conn {
            Some(c) => c.stdout.read(buf),
            None => Ok(0),
        }
    }
}
