//! Small file helpers: bounded reads, hashing, atomic durable writes.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::Error;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Reads at most `limit` bytes of `path`; a larger file is an error.
pub(crate) fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, Error> {
    let f = std::fs::File::open(path).map_err(io("read", path))?;
    let mut buf = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io("read", path))?;
    if buf.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: format!("{what} `{}`", path.display()),
            limit,
        });
    }
    Ok(buf)
}

/// Lower-case hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// SHA-256 of a file of at most `limit` bytes.
pub(crate) fn sha256_file(path: &Path, limit: u64) -> Result<String, Error> {
    let f = std::fs::File::open(path).map_err(io("read", path))?;
    let mut r = f.take(limit.saturating_add(1));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        total = total.saturating_add(n as u64);
        h.update(buf.get(..n).unwrap_or_default());
    }
    if total > limit {
        return Err(Error::TooLarge {
            what: format!("`{}`", path.display()),
            limit,
        });
    }
    Ok(hex::encode(h.finalize()))
}

/// Writes `data` to `dir/name` atomically and durably: a temporary file in
/// `dir`, fsync, rename over the target, fsync of the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut tmp = tempfile::Builder::new()
        .prefix(".qpm-tmp.")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io("create temporary file in", dir))?;
    tmp.write_all(data).map_err(io("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("sync", dir))?;
    let target = dir.join(name);
    tmp.persist(&target)
        .map_err(|e| io("rename into", &target)(e.error))?;
    sync_dir(dir)
}

/// fsyncs a directory (so a rename in it is durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Creates a directory and its parents with mode 0700 (new ones only).
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create directory", dir))
}
