//! The client side of the router: `qpm-sim call`, the `qrexec-client-vm`
//! stand-in that simulated qubes have on their PATH, and control commands.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use qpm_wire::router::{RouterRequest, RouterStatus};

use crate::fdpass::send_with_fds;

/// Exit status when the router cannot be reached (qrexec's "cannot invoke").
pub const EXIT_UNREACHABLE: i32 = 125;

/// Makes one call through the router with these streams; the exit status.
pub fn router_call(
    socket: &Path,
    source: &str,
    target: &str,
    service_and_arg: &str,
    stdin: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
    stderr: BorrowedFd<'_>,
) -> io::Result<i32> {
    let req = RouterRequest::Call {
        source: source.into(),
        target: target.into(),
        service_and_arg: service_and_arg.into(),
    }
    .encode()
    .map_err(io::Error::other)?;
    let sock = UnixStream::connect(socket)?;
    send_with_fds(&sock, &req, &[stdin, stdout, stderr])?;
    sock.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    sock.take(64).read_to_end(&mut answer)?;
    RouterStatus::decode(&answer)
        .map(|s| s.0)
        .map_err(|e| io::Error::other(format!("router: {e}")))
}

/// Sends a control command; the one-line answer.
pub fn control(socket: &Path, cmd: &str) -> io::Result<String> {
    let req = RouterRequest::Control(cmd.into())
        .encode()
        .map_err(io::Error::other)?;
    let mut sock = UnixStream::connect(socket)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    send_with_fds(&sock, &req, &[])?;
    sock.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    (&mut sock).take(1 << 20).read_to_string(&mut answer)?;
    Ok(answer)
}

/// Options of `qrexec-client-vm` that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QrexecArgs {
    /// Target qube.
    pub target: String,
    /// `SERVICE[+ARG]`.
    pub service: String,
    /// `--prefix-data`.
    pub prefix: Option<Vec<u8>>,
    /// Local program and its arguments.
    pub local: Vec<String>,
}

/// Parses `qrexec-client-vm [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]`.
pub fn parse_qrexec_args(args: &[String]) -> Result<QrexecArgs, String> {
    let mut out = QrexecArgs::default();
    let mut i = 0;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--" => {
                i += 1;
                break;
            }
            "-t"
            | "-T"
            | "--filter-escape-chars-stdout"
            | "--filter-escape-chars-stderr"
            | "--no-filter-escape-chars-stdout"
            | "--no-filter-escape-chars-stderr"
            | "--use-stdin-socket" => {}
            "-p" | "--prefix-data" | "-a" | "--agent-socket" | "-s" | "--source-qube" => {
                i += 1;
                let v = args
                    .get(i)
                    .ok_or_else(|| format!("option {a} needs a value"))?;
                if a == "-p" || a == "--prefix-data" {
                    out.prefix = Some(v.clone().into_bytes());
                }
            }
            s if s.starts_with("--prefix-data=") => {
                out.prefix = Some(s.trim_start_matches("--prefix-data=").as_bytes().to_vec());
            }
            s if s.starts_with("--buffer-size=") || s.starts_with("--agent-socket=") => {}
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => break,
        }
        i += 1;
    }
    let rest = args.get(i..).unwrap_or_default();
    let [target, service, local @ ..] = rest else {
        return Err(
            "usage: qrexec-client-vm [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]"
                .into(),
        );
    };
    out.target = target.replace('$', "@");
    out.service = service.clone();
    out.local = local.to_vec();
    Ok(out)
}

/// `qrexec-client-vm` inside a simulated qube: the source is
/// `QPM_SIM_QUBE`, the router is found through `QPM_SIM`.
pub fn qrexec_client_vm(args: &[String]) -> i32 {
    let parsed = match parse_qrexec_args(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("qrexec-client-vm: {e}");
            return 2;
        }
    };
    let (Some(source), Some(dir)) = (
        std::env::var_os("QPM_SIM_QUBE"),
        std::env::var_os("QPM_SIM"),
    ) else {
        eprintln!("qrexec-client-vm: not inside a simulated qube (QPM_SIM_QUBE and QPM_SIM unset)");
        return EXIT_UNREACHABLE;
    };
    let socket = crate::store::StateDir::new(dir).router_socket();
    let source = source.to_string_lossy().into_owned();
    match run_call(&socket, &source, &parsed) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qrexec-client-vm: {e}");
            EXIT_UNREACHABLE
        }
    }
}

/// Runs a call with this process's streams (and a prefix or local program).
pub fn run_call(socket: &Path, source: &str, a: &QrexecArgs) -> io::Result<i32> {
    let stderr = io::stderr();
    if let Some(program) = a.local.first() {
        let (svc_in_r, svc_in_w) = io::pipe()?;
        let (svc_out_r, svc_out_w) = io::pipe()?;
        let mut child = Command::new(program)
            .args(a.local.get(1..).unwrap_or_default())
            .stdin(Stdio::from(svc_out_r))
            .stdout(Stdio::from(svc_in_w))
            .spawn()?;
        let code = router_call(
            socket,
            source,
            &a.target,
            &a.service,
            svc_in_r.as_fd(),
            svc_out_w.as_fd(),
            stderr.as_fd(),
        );
        drop((svc_in_r, svc_out_w));
        let status = child.wait()?;
        code?;
        return Ok(status.code().unwrap_or(1));
    }
    if let Some(prefix) = &a.prefix {
        let (r, mut w) = io::pipe()?;
        let prefix = prefix.clone();
        let feeder = std::thread::spawn(move || {
            if w.write_all(&prefix).is_ok() {
                let _ = io::copy(&mut io::stdin().lock(), &mut w);
            }
        });
        let code = router_call(
            socket,
            source,
            &a.target,
            &a.service,
            r.as_fd(),
            io::stdout().as_fd(),
            stderr.as_fd(),
        );
        drop(r);
        drop(feeder);
        return code;
    }
    router_call(
        socket,
        source,
        &a.target,
        &a.service,
        io::stdin().as_fd(),
        io::stdout().as_fd(),
        stderr.as_fd(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args() {
        let a = parse_qrexec_args(&s(&["dom0", "admin.vm.List"])).unwrap();
        assert_eq!(
            (a.target.as_str(), a.service.as_str()),
            ("dom0", "admin.vm.List")
        );
        let a = parse_qrexec_args(&s(&[
            "-T",
            "--prefix-data=x",
            "$dispvm:d",
            "q.S",
            "cat",
            "-n",
        ]))
        .unwrap();
        assert_eq!(a.target, "@dispvm:d");
        assert_eq!(a.prefix.as_deref(), Some(&b"x"[..]));
        assert_eq!(a.local, s(&["cat", "-n"]));
        assert!(parse_qrexec_args(&s(&["dom0"])).is_err());
        assert!(parse_qrexec_args(&s(&["--bogus", "a", "b"])).is_err());
        let a = parse_qrexec_args(&s(&["--", "-weird", "svc"])).unwrap();
        assert_eq!(a.target, "-weird");
    }
}
