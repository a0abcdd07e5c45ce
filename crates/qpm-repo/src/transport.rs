//! Fetching repository files: HTTP(S) (through a proxy) or a local directory.
//!
//! The management qube has no network. It reaches repositories the way
//! templates reach theirs: through the updates proxy of its qube
//! (`http://127.0.0.1:8082/`, set with `qpm repo proxy`). Through a proxy,
//! `https://` is tunnelled with `CONNECT` (the Qubes updates proxy allows
//! `CONNECT` to port 443 only) and `http://` is forwarded: the request goes
//! to the proxy with the absolute URL as its target, as RFC 9112 §3.2.2
//! says and as the updates proxy expects (it refuses `CONNECT` to port 80).
//! Signatures, not the transport, make either trustworthy. A repository can
//! also be a directory: `file:///media/usb/repo` or a plain path, for USB sticks
//! and air-gapped setups.
//!
//! Every fetch is bounded: the caller gives the most bytes it accepts, and
//! anything longer is an error, whatever `Content-Length` said. Timeouts:
//! 30 s to connect, 60 s without progress, and no global cap on archives
//! (large archives on slow links) beyond their size limit. Conditional GET
//! (`If-None-Match` / `If-Modified-Since`) makes an unchanged timestamp cost
//! one request and no body.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `http://` or `https://` base URL, ending in `/`.
    Http(String),
    /// A local directory (from `file://` or a path).
    Dir(PathBuf),
}

impl Source {
    /// Parses a repository location: `http(s)://...`, `file:///...` or a
    /// path (made absolute against the current directory).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Usage(format!("{why}: `{}`", s.escape_debug()));
        if s.is_empty() || s.len() > 2048 || s.chars().any(char::is_control) {
            return Err(bad("not a repository URL or path"));
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let uri: ureq::http::Uri = s.parse().map_err(|_| bad("not a valid URL"))?;
            if uri.host().is_none_or(str::is_empty) {
                return Err(bad("URL has no host"));
            }
            if uri.query().is_some() || s.contains('#') {
                return Err(bad("a repository URL takes no query or fragment"));
            }
            let mut base = s.to_owned();
            if !base.ends_with('/') {
                base.push('/');
            }
            return Ok(Self::Http(base));
        }
        let path = if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "a file:// URL needs an absolute path (file:///media/usb/repo)",
                ));
            }
            PathBuf::from(rest)
        } else if s.contains("://") {
            return Err(bad(
                "unsupported URL scheme (use https://, http://, file:// or a path)",
            ));
        } else {
            let p = PathBuf::from(s);
            if p.is_absolute() {
                p
            } else {
                std::env::current_dir()
                    .map_err(|e| Error::Usage(format!("cannot resolve `{s}`: {e}")))?
                    .join(p)
            }
        };
        Ok(Self::Dir(path))
    }

    /// The location as stored in the configuration.
    pub fn to_config(&self) -> String {
        match self {
            Self::Http(u) => u.clone(),
            Self::Dir(p) => format!("file://{}", p.display()),
        }
    }

    /// The full location of `rel` (for messages).
    pub fn display(&self, rel: &str) -> String {
        match self {
            Self::Http(u) => format!("{u}{rel}"),
            Self::Dir(p) => p.join(rel).display().to_string(),
        }
    }
}

/// HTTP cache validators of a previous response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// `ETag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `Last-Modified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl Validators {
    fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// The result of a (conditional) fetch.
#[derive(Debug)]
pub enum Fetched {
    /// 304: what we have is current.
    NotModified,
    /// The body, with the validators for next time.
    Body(Vec<u8>, Validators),
}

/// Requests made and body bytes received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Requests (HTTP) or file reads (directory).
    pub requests: u64,
    /// Body bytes received.
    pub bytes: u64,
}

/// The fetcher: one HTTP agent (connection pool, proxy, timeouts).
#[derive(Debug)]
pub struct Transport {
    agent: ureq::Agent,
    /// `HOST:PORT` of the proxy, for forwarded `http://` requests.
    proxy: Option<String>,
}

/// Connect timeout, and the longest wait for the next bytes of a response.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RECV_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response head accepted from a proxy.
const MAX_HEAD: usize = 64 * 1024;

fn header_value(v: &str) -> Option<String> {
    (v.len() <= 256 && v.bytes().all(|b| (0x20..0x7f).contains(&b))).then(|| v.to_owned())
}

impl Transport {
    /// A transport, through `proxy` (`http://HOST:PORT/`) when given.
    pub fn new(proxy: Option<&str>) -> Result<Self, Error> {
        let (proxy, forward) = match proxy {
            Some(p) => {
                let parsed = ureq::Proxy::new(p).map_err(|e| {
                    Error::Usage(format!("invalid proxy `{}`: {e}", p.escape_debug()))
                })?;
                if parsed.protocol() != ureq::ProxyProtocol::Http {
                    return Err(Error::Usage(format!(
                        "unsupported proxy `{}`: use http://HOST:PORT/",
                        p.escape_debug()
                    )));
                }
                let addr = format!("{}:{}", parsed.host(), parsed.port());
                (Some(parsed), Some(addr))
            }
            None => (None, None),
        };
        let config = ureq::Agent::config_builder()
            .proxy(proxy)
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RECV_TIMEOUT))
            .timeout_recv_body(None)
            .max_redirects(5)
            .user_agent(concat!("qpm/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            agent: config.into(),
            proxy: forward,
        })
    }

    /// Fetches `rel` below `src`, at most `limit` bytes, conditionally when
    /// `cond` is given (HTTP only).
    pub fn get(
        &self,
        src: &Source,
        rel: &str,
        cond: Option<&Validators>,
        limit: u64,
        stats: &mut Stats,
    ) -> Result<Fetched, Error> {
        let mut out = Vec::new();
        match self.fetch_into(src, rel, cond, limit, &mut out, &mut |_, _| {}, stats)? {
            None => Ok(Fetched::NotModified),
            Some(v) => Ok(Fetched::Body(out, v)),
        }
    }

    /// Streams `rel` into `out`, failing past `limit` bytes; `progress`
    /// gets (bytes so far, expected total). Returns `None` on 304.
    #[allow(clippy::too_many_arguments)]
    pub fn fetch_into(
        &self,
        src: &Source,
        rel: &str,
        cond: Option<&Validators>,
        limit: u64,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64, u64),
        stats: &mut Stats,
    ) -> Result<Option<Validators>, Error> {
        let url = src.display(rel);
        let terr = |reason: String| Error::Transport {
            url: url.clone(),
            reason,
        };
        stats.requests += 1;
        match src {
            Source::Dir(dir) => {
                let path = dir.join(rel);
                let f = std::fs::File::open(&path).map_err(|e| terr(e.to_string()))?;
                let mut r = f.take(limit.saturating_add(1));
                let n = copy_progress(&mut r, out, limit, progress, stats)
                    .map_err(|e| terr(e.to_string()))?;
                if n > limit {
                    return Err(Error::TooLarge { what: url, limit });
                }
                Ok(Some(Validators::default()))
            }
            Source::Http(base) => {
                let full = format!("{base}{rel}");
                if let Some(proxy) = &self.proxy
                    && full
                        .get(..7)
                        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
                {
                    return forward(proxy, &full, cond, limit, out, progress, stats).map_err(|e| {
                        match e {
                            Forward::Io(reason) => terr(reason),
                            Forward::TooLarge => Error::TooLarge {
                                what: full.clone(),
                                limit,
                            },
                        }
                    });
                }
                let mut req = self.agent.get(&full);
                if let Some(c) = cond.filter(|c| !c.is_empty()) {
                    if let Some(e) = &c.etag {
                        req = req.header("If-None-Match", e);
                    }
                    if let Some(m) = &c.last_modified {
                        req = req.header("If-Modified-Since", m);
                    }
                }
                let resp = req.call().map_err(|e| terr(e.to_string()))?;
                let status = resp.status().as_u16();
                if status == 304 {
                    return Ok(None);
                }
                if status != 200 {
                    return Err(terr(format!("HTTP status {status}")));
                }
                let h = resp.headers();
                let v = Validators {
                    etag: h
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .and_then(header_value),
                    last_modified: h
                        .get("last-modified")
                        .and_then(|v| v.to_str().ok())
                        .and_then(header_value),
                };
                let mut body = resp
                    .into_body()
                    .into_with_config()
                    .limit(u64::MAX)
                    .reader()
                    .take(limit.saturating_add(1));
                let n = copy_progress(&mut body, out, limit, progress, stats)
                    .map_err(|e| terr(e.to_string()))?;
                if n > limit {
                    return Err(Error::TooLarge { what: full, limit });
                }
                Ok(Some(v))
            }
        }
    }
}

enum Forward {
    Io(String),
    TooLarge,
}

/// `GET URL` through the HTTP proxy at `proxy` (`HOST:PORT`) with the
/// absolute URL as request target. HTTP/1.0, one request per connection,
/// so the body is never chunked: it ends at `Content-Length` or the close.
#[allow(clippy::too_many_arguments)]
fn forward(
    proxy: &str,
    url: &str,
    cond: Option<&Validators>,
    limit: u64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
    stats: &mut Stats,
) -> Result<Option<Validators>, Forward> {
    use std::net::{TcpStream, ToSocketAddrs};
    let io = |what: &str, e: std::io::Error| Forward::Io(format!("{what} {proxy}: {e}"));
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|_| Forward::Io("not a valid URL".into()))?;
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| Forward::Io("URL has no host".into()))?;
    let mut last = None;
    let mut conn = None;
    for addr in proxy
        .to_socket_addrs()
        .map_err(|e| io("resolving proxy", e))?
    {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut conn = match (conn, last) {
        (Some(c), _) => c,
        (None, Some(e)) => return Err(io("connecting to proxy", e)),
        (None, None) => return Err(Forward::Io(format!("proxy {proxy} has no address"))),
    };
    conn.set_read_timeout(Some(RECV_TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(RECV_TIMEOUT)))
        .map_err(|e| io("configuring connection to", e))?;
    let mut head = format!(
        "GET {url} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: qpm/{}\r\nAccept: */*\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(c) = cond {
        if let Some(e) = &c.etag {
            head.push_str(&format!("If-None-Match: {e}\r\n"));
        }
        if let Some(m) = &c.last_modified {
            head.push_str(&format!("If-Modified-Since: {m}\r\n"));
        }
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())
        .map_err(|e| io("sending request to", e))?;

    // Response head, bounded.
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut chunk = [0u8; 8 * 1024];
    let (status, len, validators, body_start) = loop {
        let k = match conn.read(&mut chunk) {
            Ok(0) => {
                return Err(Forward::Io(format!(
                    "proxy {proxy} closed before a response"
                )));
            }
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("reading response from", e)),
        };
        buf.extend_from_slice(chunk.get(..k).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut len = None;
                let mut v = Validators::default();
                for h in resp.headers.iter() {
                    let value = std::str::from_utf8(h.value).ok();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = Some(
                            value
                                .and_then(|s| s.trim().parse::<u64>().ok())
                                .ok_or_else(|| {
                                    Forward::Io("invalid Content-Length in response".into())
                                })?,
                        );
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(Forward::Io(
                            "unexpected Transfer-Encoding in a response to HTTP/1.0".into(),
                        ));
                    } else if h.name.eq_ignore_ascii_case("etag") {
                        v.etag = value.and_then(header_value);
                    } else if h.name.eq_ignore_ascii_case("last-modified") {
                        v.last_modified = value.and_then(header_value);
                    }
                }
                break (resp.code.unwrap_or(0), len, v, n);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(Forward::Io(format!(
                    "response head longer than {MAX_HEAD} bytes"
                )));
            }
            Err(e) => return Err(Forward::Io(format!("invalid HTTP response: {e}"))),
        }
    };
    if status == 304 {
        return Ok(None);
    }
    if status != 200 {
        return Err(Forward::Io(format!(
            "HTTP status {status} (through proxy {proxy})"
        )));
    }
    if len.is_some_and(|l| l > limit) {
        return Err(Forward::TooLarge);
    }
    let early = buf.get(body_start..).unwrap_or_default();
    // With a length, stop there (a keep-alive proxy may not close).
    let cap = len.unwrap_or(limit.saturating_add(1));
    let mut body = Read::chain(early, conn).take(cap);
    let total = len.unwrap_or(limit);
    let n = copy_progress(&mut body, out, total, progress, stats)
        .map_err(|e| io("reading body through", e))?;
    if n > limit {
        return Err(Forward::TooLarge);
    }
    if len.is_some_and(|l| l != n) {
        return Err(Forward::Io(format!(
            "body ended after {n} of {} bytes",
            len.unwrap_or_default()
        )));
    }
    Ok(Some(validators))
}

fn copy_progress(
    r: &mut dyn Read,
    out: &mut dyn Write,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
    stats: &mut Stats,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(buf.get(..k).unwrap_or_default())?;
        n = n.saturating_add(k as u64);
        stats.bytes = stats.bytes.saturating_add(k as u64);
        progress(n, total);
    }
    Ok(n)
}

/// Whether `p` looks like a local repository (for messages).
pub fn is_local(p: &Path) -> bool {
    p.join("timestamp.minisig").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            Source::parse("https://example.org/repo").unwrap(),
            Source::Http("https://example.org/repo/".into())
        );
        assert_eq!(
            Source::parse("file:///media/usb/repo").unwrap(),
            Source::Dir("/media/usb/repo".into())
        );
        assert_eq!(
            Source::parse("/media/usb").unwrap(),
            Source::Dir("/media/usb".into())
        );
        assert!(matches!(Source::parse("rel/dir").unwrap(), Source::Dir(p) if p.is_absolute()));
        for bad in [
            "ftp://x/",
            "file://relative",
            "https://",
            "https://h/x?y=1",
            "",
            "a\nb",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dir_fetch_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"0123456789").unwrap();
        let t = Transport::new(None).unwrap();
        let src = Source::Dir(d.path().into());
        let mut st = Stats::default();
        match t.get(&src, "f", None, 10, &mut st).unwrap() {
            Fetched::Body(b, _) => assert_eq!(b, b"0123456789"),
            Fetched::NotModified => panic!(),
        }
        assert!(matches!(
            t.get(&src, "f", None, 9, &mut st),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(st.requests, 2);
    }
}
