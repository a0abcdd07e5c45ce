//! The floor under a push with nothing to change, for `bench/sync-vs-rsync.sh`.
//!
//! Two processes that do only what any stat-checking sync must: the sender
//! starts its peer through a client program (as `qpm sync push` starts
//! `qpm-agent` through qrexec-client-vm), lists and `stat`s its tree and
//! sends a manifest-sized message; the peer lists and `stat`s its own tree,
//! reads the message and answers. No paths are checked, nothing is hashed,
//! compared, recorded or logged. qpm's figure next to this one is what its
//! checks, state and protocol cost on top.
//!
//! `stat_floor sender DIR CLIENT BYTES` / `stat_floor peer DIR`
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use rustix::fs::{AtFlags, Dir, Mode, OFlags, openat, statat};

/// Lists `dir` and its subdirectories and `stat`s every file; returns the
/// sum of their sizes (so no call can be left out).
fn walk(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?];
    while let Some(fd) = stack.pop() {
        let mut files = Vec::new();
        for e in Dir::read_from(&fd)? {
            let e = e?;
            let name = e.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            match e.file_type() {
                rustix::fs::FileType::Directory => stack.push(openat(
                    &fd,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?),
                _ => files.push(name.to_owned()),
            }
        }
        for f in &files {
            total += statat(&fd, f.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?.st_size as u64;
        }
    }
    Ok(total)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| {
        args.get(i).cloned().ok_or_else(|| {
            std::io::Error::other("usage: stat_floor sender DIR CLIENT BYTES | peer DIR")
        })
    };
    match arg(1)?.as_str() {
        "sender" => {
            let mut child = Command::new(arg(3)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let sum = walk(arg(2)?.as_ref())?;
            let bytes: usize = arg(4)?.parse().map_err(std::io::Error::other)?;
            let msg = vec![(sum & 0xff) as u8; bytes];
            let mut to = child.stdin.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
            to.write_all(&(bytes as u64).to_be_bytes())?;
            to.write_all(&msg)?;
            drop(to);
            let mut reply = Vec::new();
            child
                .stdout
                .take()
                .ok_or(std::io::ErrorKind::BrokenPipe)?
                .read_to_end(&mut reply)?;
            child.wait()?;
        }
        "peer" => {
            let sum = walk(arg(2)?.as_ref())?;
            let mut len = [0u8; 8];
            let mut input = std::io::stdin().lock();
            input.read_exact(&mut len)?;
            let mut msg = vec![0u8; usize::try_from(u64::from_be_bytes(len)).unwrap_or(0)];
            input.read_exact(&mut msg)?;
            std::io::stdout().write_all(&[(sum & 0xff) as u8; 37])?;
        }
        _ => return Err(std::io::Error::other("first argument: sender or peer")),
    }
    Ok(())
}
