//! Sending one length-prefixed message with file descriptors attached over a
//! unix stream socket, and receiving it (safe `rustix` wrappers).

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

/// Most descriptors accepted with one message.
pub const MAX_FDS: usize = 3;

/// Sends `len (u32 LE) + body` with `fds` attached.
pub fn send_with_fds(sock: &UnixStream, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut msg = len.to_le_bytes().to_vec();
    msg.extend_from_slice(body);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
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
    // the descriptors went with the first bytes; send the rest plainly
    while sent < msg.len() {
        let rest = msg.get(sent..).unwrap_or_default();
        let mut none = SendAncillaryBuffer::default();
        let n = sendmsg(sock, &[IoSlice::new(rest)], &mut none, SendFlags::NOSIGNAL)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// Receives one message of at most `max` bytes with its descriptors, within
/// `timeout`.
pub fn recv_with_fds(
    sock: &mut UnixStream,
    max: usize,
    timeout: Duration,
) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let deadline = Instant::now() + timeout;
    sock.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; max.saturating_add(4).min(1 << 20)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        &*sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(iter) = m {
            fds.extend(iter);
        }
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::other("too many file descriptors"));
    }
    let mut data = buf.get(..got.bytes).unwrap_or_default().to_vec();
    while data.len() < 4 {
        read_more(sock, &mut data, deadline)?;
    }
    let mut lenb = [0u8; 4];
    lenb.copy_from_slice(data.get(..4).unwrap_or(&[0; 4]));
    let len = u32::from_le_bytes(lenb) as usize;
    if len > max {
        return Err(io::Error::other("message too long"));
    }
    while data.len() < len + 4 {
        read_more(sock, &mut data, deadline)?;
    }
    if data.len() > len + 4 {
        return Err(io::Error::other("trailing data after the message"));
    }
    Ok((data.split_off(4), fds))
}

fn read_more(sock: &mut UnixStream, data: &mut Vec<u8>, deadline: Instant) -> io::Result<()> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
    sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
    let mut chunk = [0u8; 8192];
    let n = sock.read(&mut chunk)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    data.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn roundtrip_with_fds() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (r, mut w) = io::pipe().unwrap();
        send_with_fds(&a, b"hello", &[r.as_fd()]).unwrap();
        drop(r);
        let (body, fds) = recv_with_fds(&mut b, 100, Duration::from_secs(5)).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(fds.len(), 1);
        w.write_all(b"through the passed pipe").unwrap();
        drop(w);
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "through the passed pipe");
    }

    #[test]
    fn refuses_oversized_and_truncated() {
        let (a, mut b) = UnixStream::pair().unwrap();
        send_with_fds(&a, &[0u8; 200], &[]).unwrap();
        assert!(recv_with_fds(&mut b, 100, Duration::from_secs(5)).is_err());
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&10u32.to_le_bytes()).unwrap();
        a.write_all(b"abc").unwrap();
        drop(a);
        assert!(recv_with_fds(&mut b, 100, Duration::from_secs(5)).is_err());
    }
}
