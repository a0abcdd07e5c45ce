//! Client checks against repositories whose publisher key signs hostile
//! content (a compromised publisher, or a malicious package author): the
//! signature is valid, so every other check must hold on its own.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use qpm_repo::client::{Client, UpdateStatus};
use qpm_repo::index::{Entry, Index, Timestamp};
use qpm_repo::paths::Paths;
use qpm_repo::sign::SecretKey;
use qpm_repo::{Error, PackageSpec, publish};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// Writes `archives` and a signed index listing them as given.
fn forge(repo: &Path, key: &SecretKey, version: u64, entries: Vec<(Entry, Vec<u8>)>) {
    std::fs::create_dir_all(repo.join("packages")).unwrap();
    std::fs::create_dir_all(repo.join("index")).unwrap();
    let mut pk = Vec::new();
    for (e, bytes) in entries {
        std::fs::write(repo.join(&e.archive), bytes).unwrap();
        pk.push(e);
    }
    let idx = Index {
        format: 1,
        version,
        expires: 4_000_000_000,
        packages: pk,
    };
    let b = idx.to_bytes();
    let h = sha(&b);
    std::fs::write(repo.join(format!("index/{h}.json")), &b).unwrap();
    let ts = Timestamp {
        version,
        expires: idx.expires,
        index: format!("index/{h}.json"),
        size: b.len() as u64,
        sha256: h,
    };
    let sig = key.sign(&b, &ts.to_comment()).unwrap();
    std::fs::write(repo.join("timestamp.minisig"), sig.to_file()).unwrap();
}

fn entry(name: &str, version: &str, bytes: &[u8]) -> Entry {
    Entry {
        name: name.into(),
        version: version.parse().unwrap(),
        summary: "forged".into(),
        description: None,
        requires: vec![],
        archive: format!("packages/{name}-{version}.qpm"),
        sha256: sha(bytes),
        size: bytes.len() as u64,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    key: SecretKey,
    client: Client,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let key = SecretKey::generate().unwrap();
    let mut client = Client::open(Paths::under(dir.path().join("home"))).unwrap();
    client
        .add_repo("main", repo.to_str().unwrap(), &key.public())
        .unwrap();
    Setup {
        _dir: dir,
        repo,
        key,
        client,
    }
}

fn gz_tar(name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

#[test]
fn signed_archive_with_traversal_or_symlink_is_refused() {
    let mut s = setup();
    let bad1 = gz_tar(
        b"../../../../tmp/qpm-pwned",
        tar::EntryType::Regular,
        b"",
        b"x",
    );
    let bad2 = gz_tar(b"qpm.toml", tar::EntryType::Symlink, b"/etc/passwd", b"");
    forge(
        &s.repo,
        &s.key,
        1,
        vec![
            (entry("evil", "1.0.0", &bad1), bad1.clone()),
            (entry("evil", "2.0.0", &bad2), bad2.clone()),
        ],
    );
    let r = s.client.update(&[], &mut |_, _, _| {}).unwrap();
    assert_eq!(r[0].status, UpdateStatus::Updated);
    for (v, want) in [("1.0.0", "`..`"), ("2.0.0", "links")] {
        let res = s
            .client
            .resolve(&format!("evil@{v}").parse().unwrap())
            .unwrap();
        let e = s.client.fetch(&res, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, Error::Archive { .. }), "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    assert!(!Path::new("/tmp/qpm-pwned").exists());
}

#[test]
fn oversized_archive_is_refused_before_download() {
    let mut s = setup();
    let ok = std::fs::read(examples().join("../crates/qpm-repo/Cargo.toml")).unwrap();
    let mut e = entry("big", "1.0.0", &ok);
    e.size = 65 << 20;
    forge(&s.repo, &s.key, 1, vec![(e, ok)]);
    let r = s.client.update(&[], &mut |_, _, _| {}).unwrap();
    assert_eq!(r[0].status, UpdateStatus::Failed);
    let msg = r[0].error.as_deref().unwrap();
    assert!(msg.contains("above the archive limit"), "{msg}");
}

#[test]
fn padded_or_swapped_archive_is_refused() {
    let mut s = setup();
    let (_, good) = qpm_repo::archive::build_bytes(&examples().join("dangerzone/1.0.0")).unwrap();
    let e = entry("dangerzone", "1.0.0", &good);
    forge(&s.repo, &s.key, 1, vec![(e, good.clone())]);
    s.client.update(&[], &mut |_, _, _| {}).unwrap();
    let res = s.client.resolve(&"dangerzone".parse().unwrap()).unwrap();
    // Padded: more bytes than signed.
    let mut padded = good;
    padded.extend_from_slice(b"trailing");
    std::fs::write(s.repo.join("packages/dangerzone-1.0.0.qpm"), &padded).unwrap();
    let e = s.client.download(&res, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    // Right size and hash, but another package inside (mix-and-match).
    let (_, other) = qpm_repo::archive::build_bytes(&examples().join("dangerzone/2.0.0")).unwrap();
    forge(
        &s.repo,
        &s.key,
        2,
        vec![(entry("dangerzone", "1.0.0", &other), other)],
    );
    s.client.update(&[], &mut |_, _, _| {}).unwrap();
    let res = s.client.resolve(&"dangerzone".parse().unwrap()).unwrap();
    let e = s.client.fetch(&res, &mut |_, _| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("promises dangerzone 1.0.0 but the archive holds dangerzone 2.0.0"),
        "{e}"
    );
}

#[test]
fn same_version_with_other_content_is_refused() {
    let mut s = setup();
    let (_, a) = qpm_repo::archive::build_bytes(&examples().join("dangerzone/1.0.0")).unwrap();
    forge(
        &s.repo,
        &s.key,
        5,
        vec![(entry("dangerzone", "1.0.0", &a), a.clone())],
    );
    s.client.update(&[], &mut |_, _, _| {}).unwrap();
    let (_, b) = qpm_repo::archive::build_bytes(&examples().join("dangerzone/2.0.0")).unwrap();
    forge(
        &s.repo,
        &s.key,
        5,
        vec![(entry("dangerzone", "2.0.0", &b), b)],
    );
    let r = s.client.update(&[], &mut |_, _, _| {}).unwrap();
    assert_eq!(r[0].status, UpdateStatus::Failed);
    assert!(
        r[0].error
            .as_deref()
            .unwrap()
            .contains("different index under version 5")
    );
}

#[test]
fn expiry_is_checked_at_resolution_too() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let key = SecretKey::generate().unwrap();
    let exp = 2_000_000_000;
    publish::build_repository(
        &repo,
        &[examples().join("dangerzone")],
        &key,
        &publish::BuildOptions {
            expires: exp,
            version: None,
        },
    )
    .unwrap();
    let paths = Paths::under(dir.path().join("home"));
    let mut c = Client::open(paths.clone()).unwrap().with_now(exp - 10);
    c.add_repo("main", repo.to_str().unwrap(), &key.public())
        .unwrap();
    c.update(&[], &mut |_, _, _| {}).unwrap();
    let spec: PackageSpec = "dangerzone@1".parse().unwrap();
    assert_eq!(c.resolve(&spec).unwrap().entry.version.to_string(), "1.0.0");
    // Later, with no newer index reachable: frozen, refused.
    let c = Client::open(paths).unwrap().with_now(exp + 1);
    let e = c.resolve(&spec).unwrap_err();
    assert!(matches!(e, Error::Expired { .. }), "{e}");
    // The state on disk is checked again: tampering is noticed.
    let ip = dir.path().join("home/state/repos/main/index.json");
    let mut b = std::fs::read(&ip).unwrap();
    b[20] ^= 1;
    std::fs::write(&ip, b).unwrap();
    assert!(c.search("").is_err());
}

#[test]
fn open_package_reads_directories_and_archives() {
    let d = tempfile::tempdir().unwrap();
    let built = publish::build_package(&examples().join("split-browser/1.0.0"), d.path()).unwrap();
    let a = qpm_repo::open_package(&built.path).unwrap();
    assert_eq!(a.manifest.name, "split-browser");
    assert_eq!(a.archive_sha256.as_deref(), Some(built.sha256.as_str()));
    assert!(a.path().join("files/bookmarks.tsv").is_file());
    let tmp = a.path().to_owned();
    drop(a);
    assert!(!tmp.exists(), "the private directory is removed");
    let dirp = qpm_repo::open_package(&examples().join("split-browser/1.0.0")).unwrap();
    assert_eq!(dirp.manifest.version.to_string(), "1.0.0");
    assert!(dirp.archive_sha256.is_none());
}
