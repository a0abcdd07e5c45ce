//! Ed25519 keys and signatures in minisign's file formats.
//!
//! Public keys, secret keys and signatures are written and read in the
//! formats of [minisign](https://jedisct1.github.io/minisign/), so
//! `minisign -V -p repo.pub -m FILE -x SIG` checks what qpm signed, and a key
//! made by `minisign -G -W` (no password) signs repositories with qpm.
//!
//! * public key: `untrusted comment: ...` then base64 of `"Ed" || key id (8)
//!   || public key (32)`;
//! * secret key: base64 of `"Ed" || kdf || "B2" || salt (32) || opslimit (8)
//!   || memlimit (8) || key id (8) || secret key (64) || checksum (32)`, where
//!   the checksum is BLAKE2b-256 of `"Ed" || key id || secret key` (zero
//!   in unencrypted keys written by `minisign -G -W`). qpm reads
//!   and writes unencrypted keys (kdf `\0\0`); keys encrypted with a password
//!   are refused with a hint;
//! * signature: `untrusted comment:` line, base64 of `"ED" || key id ||
//!   Ed25519(BLAKE2b-512(data))`, `trusted comment:` line, base64 of the
//!   global signature `Ed25519(signature || trusted comment)`.
//!
//! qpm signs prehashed (`ED`) and verifies both `ED` and legacy `Ed`
//! signatures, with Ed25519's strict verification (no malleable or
//! small-order encodings). The trusted comment is covered by the signature:
//! qpm uses it for the metadata it must authenticate without the data
//! (see [`crate::index::Timestamp`]), and every qpm signature starts its
//! trusted comment with a purpose word so that a signature made for one
//! purpose is never accepted for another.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blake2::{Blake2b512, Digest as _};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::Error;

/// Longest trusted comment accepted (minisign's own limit).
pub const MAX_TRUSTED_COMMENT_BYTES: usize = 8192;
/// Longest untrusted comment accepted (minisign's own limit).
pub const MAX_COMMENT_BYTES: usize = 1024;
/// Largest key or signature file read.
pub const MAX_SIG_FILE_BYTES: usize = 16 * 1024;

const PK_LEN: usize = 2 + 8 + 32;
const SK_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
const SIG_LEN: usize = 2 + 8 + 64;

/// A key id: 8 bytes, shown as minisign shows it (16 upper-case hex digits
/// of the little-endian number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl KeyId {
    /// Parses the 16-hex-digit form that [`Display`](fmt::Display) prints.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16)
            .ok()
            .map(|n| Self(n.to_le_bytes()))
    }
}

/// A public key (what a client trusts).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key id, also carried by every signature it makes.
    pub id: KeyId,
    key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// A secret key (what a publisher signs with). Its `Debug` never prints the key.
pub struct SecretKey {
    /// The key id.
    pub id: KeyId,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

/// A parsed signature file.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    /// Whether the data was prehashed with BLAKE2b-512 (`ED`), the default.
    pub prehashed: bool,
    /// The id of the key that made it.
    pub key_id: KeyId,
    sig: [u8; 64],
    /// The untrusted comment (not covered by any signature).
    pub untrusted_comment: String,
    /// The trusted comment (covered by the global signature).
    pub trusted_comment: String,
    global: [u8; 64],
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("key_id", &self.key_id)
            .field("prehashed", &self.prehashed)
            .field("trusted_comment", &self.trusted_comment)
            .finish_non_exhaustive()
    }
}

fn bad(what: &'static str, why: impl Into<String>) -> Error {
    Error::BadKeyOrSignature {
        what,
        reason: why.into(),
    }
}

fn decode_line(what: &'static str, line: &str, len: usize) -> Result<Vec<u8>, Error> {
    let b = B64
        .decode(line.trim_end_matches('\r').trim())
        .map_err(|e| bad(what, format!("invalid base64: {e}")))?;
    if b.len() != len {
        return Err(bad(
            what,
            format!("decoded to {} bytes, expected {len}", b.len()),
        ));
    }
    Ok(b)
}

fn take<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(at..at.saturating_add(N)) {
        out.copy_from_slice(s);
    }
    out
}

fn comment<'a>(what: &'static str, line: Option<&'a str>, prefix: &str) -> Result<&'a str, Error> {
    let line = line.ok_or_else(|| bad(what, "file ends early"))?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    line.strip_prefix(prefix)
        .ok_or_else(|| bad(what, format!("expected a line starting with `{prefix}`")))
}

fn check_comment(what: &'static str, c: &str, limit: usize) -> Result<(), Error> {
    if c.len() > limit {
        return Err(bad(what, format!("comment longer than {limit} bytes")));
    }
    if c.chars().any(|ch| ch.is_control() && ch != '\t') {
        return Err(bad(what, "comment contains control characters"));
    }
    Ok(())
}

impl PublicKey {
    /// Parses a public key: either a whole minisign `.pub` file or just its
    /// base64 line (`RW...`), as `minisign -P` takes it.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_SIG_FILE_BYTES {
            return Err(bad("public key", "too large"));
        }
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().ok_or_else(|| bad("public key", "empty"))?;
        let line = if first.starts_with("untrusted comment: ") {
            lines
                .next()
                .ok_or_else(|| bad("public key", "no key line after the comment"))?
        } else {
            first
        };
        if lines.next().is_some() {
            return Err(bad("public key", "unexpected text after the key line"));
        }
        Self::from_bytes(&decode_line("public key", line, PK_LEN)?)
    }

    fn from_bytes(b: &[u8]) -> Result<Self, Error> {
        if b.get(..2) != Some(b"Ed") {
            return Err(bad("public key", "not an Ed25519 minisign key"));
        }
        let id = KeyId(take::<8>(b, 2));
        let key = VerifyingKey::from_bytes(&take::<32>(b, 10))
            .map_err(|_| bad("public key", "not a valid Ed25519 point"))?;
        if key.is_weak() {
            return Err(bad("public key", "weak (small-order) Ed25519 key"));
        }
        Ok(Self { id, key })
    }

    /// The base64 line (`RW...`), as `minisign -P` takes it.
    pub fn to_base64(&self) -> String {
        let mut b = Vec::with_capacity(PK_LEN);
        b.extend_from_slice(b"Ed");
        b.extend_from_slice(&self.id.0);
        b.extend_from_slice(self.key.as_bytes());
        B64.encode(b)
    }

    /// The whole `.pub` file.
    pub fn to_file(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.id,
            self.to_base64()
        )
    }

    /// Checks `sig` over `data` with this key: key id, the signature on the
    /// data and the global signature on the trusted comment.
    pub fn verify(&self, data: &[u8], sig: &Signature) -> Result<(), Error> {
        if sig.key_id != self.id {
            return Err(Error::WrongKey {
                expected: self.id.to_string(),
                found: sig.key_id.to_string(),
            });
        }
        let s = ed25519_dalek::Signature::from_bytes(&sig.sig);
        let ok = if sig.prehashed {
            self.key.verify_strict(&Blake2b512::digest(data), &s)
        } else {
            self.key.verify_strict(data, &s)
        };
        ok.map_err(|_| Error::BadSignature {
            what: "data".into(),
        })?;
        self.verify_comment(sig)
    }

    /// Checks only the global signature (key id and trusted comment), which
    /// authenticates the trusted comment without the data it was made for.
    pub fn verify_comment(&self, sig: &Signature) -> Result<(), Error> {
        if sig.key_id != self.id {
            return Err(Error::WrongKey {
                expected: self.id.to_string(),
                found: sig.key_id.to_string(),
            });
        }
        let mut msg = Vec::with_capacity(64 + sig.trusted_comment.len());
        msg.extend_from_slice(&sig.sig);
        msg.extend_from_slice(sig.trusted_comment.as_bytes());
        self.key
            .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig.global))
            .map_err(|_| Error::BadSignature {
                what: "trusted comment".into(),
            })
    }
}

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        let mut id = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| bad("secret key", format!("no randomness: {e}")))?;
        getrandom::fill(&mut id).map_err(|e| bad("secret key", format!("no randomness: {e}")))?;
        Ok(Self {
            id: KeyId(id),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Parses an unencrypted minisign secret key file.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_SIG_FILE_BYTES {
            return Err(bad("secret key", "too large"));
        }
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        comment("secret key", lines.next(), "untrusted comment: ")?;
        let line = lines
            .next()
            .ok_or_else(|| bad("secret key", "no key line after the comment"))?;
        let b = decode_line("secret key", line, SK_LEN)?;
        if b.get(..2) != Some(b"Ed") {
            return Err(bad("secret key", "not an Ed25519 minisign key"));
        }
        match b.get(2..4) {
            Some([0, 0]) => {}
            Some(b"Sc") => {
                return Err(bad(
                    "secret key",
                    "the key is encrypted with a password; qpm signs with unencrypted keys \
                     (`qpm key generate`, or `minisign -G -W`); keep them on an offline, \
                     encrypted medium",
                ));
            }
            _ => return Err(bad("secret key", "unknown key derivation algorithm")),
        }
        if b.get(4..6) != Some(b"B2") {
            return Err(bad("secret key", "unknown checksum algorithm"));
        }
        let base = 2 + 2 + 2 + 32 + 8 + 8;
        let id = take::<8>(&b, base);
        let sk = take::<64>(&b, base + 8);
        let chk = take::<32>(&b, base + 8 + 64);
        // `minisign -G -W` leaves the checksum of an unencrypted key zero;
        // the public half is checked against the secret half below anyway.
        if chk != [0u8; 32]
            && !bool::from(subtle::ConstantTimeEq::ct_eq(
                &checksum(&id, &sk)[..],
                &chk[..],
            ))
        {
            return Err(bad("secret key", "checksum mismatch (damaged key file)"));
        }
        let key = SigningKey::from_bytes(&take::<32>(&sk, 0));
        if key.verifying_key().as_bytes()[..] != sk[32..] {
            return Err(bad(
                "secret key",
                "public half does not match the secret half",
            ));
        }
        Ok(Self { id: KeyId(id), key })
    }

    /// The whole unencrypted key file (keep it mode 0600).
    pub fn to_file(&self) -> String {
        let mut sk = [0u8; 64];
        sk[..32].copy_from_slice(self.key.as_bytes());
        sk[32..].copy_from_slice(self.key.verifying_key().as_bytes());
        let mut b = Vec::with_capacity(SK_LEN);
        b.extend_from_slice(b"Ed");
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(b"B2");
        b.extend_from_slice(&[0u8; 32 + 8 + 8]);
        b.extend_from_slice(&self.id.0);
        b.extend_from_slice(&sk);
        b.extend_from_slice(&checksum(&self.id.0, &sk));
        format!(
            "untrusted comment: minisign secret key {} (unencrypted)\n{}\n",
            self.id,
            B64.encode(b)
        )
    }

    /// Signs `data` (prehashed, `ED`) with a trusted comment.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<Signature, Error> {
        check_comment(
            "trusted comment",
            trusted_comment,
            MAX_TRUSTED_COMMENT_BYTES,
        )?;
        let sig = self.key.sign(&Blake2b512::digest(data)).to_bytes();
        let mut msg = Vec::with_capacity(64 + trusted_comment.len());
        msg.extend_from_slice(&sig);
        msg.extend_from_slice(trusted_comment.as_bytes());
        let global = self.key.sign(&msg).to_bytes();
        Ok(Signature {
            prehashed: true,
            key_id: self.id,
            sig,
            untrusted_comment: format!("signature from qpm key {}", self.id),
            trusted_comment: trusted_comment.to_owned(),
            global,
        })
    }
}

fn checksum(id: &[u8; 8], sk: &[u8; 64]) -> [u8; 32] {
    let mut h = blake2::Blake2b::<blake2::digest::consts::U32>::new();
    h.update(b"Ed");
    h.update(id);
    h.update(sk);
    let mut out = [0u8; 32];
    out.copy_from_slice(&h.finalize());
    out
}

impl Signature {
    /// Parses a `.minisig` file (bounded by [`MAX_SIG_FILE_BYTES`]).
    pub fn parse(text: &str) -> Result<Self, Error> {
        const W: &str = "signature";
        if text.len() > MAX_SIG_FILE_BYTES {
            return Err(bad(W, "too large"));
        }
        let mut lines = text.split('\n');
        let untrusted = comment(W, lines.next(), "untrusted comment: ")?;
        check_comment(W, untrusted, MAX_COMMENT_BYTES)?;
        let b = decode_line(
            W,
            lines.next().ok_or_else(|| bad(W, "file ends early"))?,
            SIG_LEN,
        )?;
        let prehashed = match b.get(..2) {
            Some(b"ED") => true,
            Some(b"Ed") => false,
            _ => return Err(bad(W, "unknown signature algorithm")),
        };
        let trusted = comment(W, lines.next(), "trusted comment: ")?;
        check_comment(W, trusted, MAX_TRUSTED_COMMENT_BYTES)?;
        let g = decode_line(
            W,
            lines.next().ok_or_else(|| bad(W, "file ends early"))?,
            64,
        )?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(bad(W, "unexpected text after the signature"));
        }
        Ok(Self {
            prehashed,
            key_id: KeyId(take::<8>(&b, 2)),
            sig: take::<64>(&b, 10),
            untrusted_comment: untrusted.to_owned(),
            trusted_comment: trusted.to_owned(),
            global: take::<64>(&g, 0),
        })
    }

    /// The `.minisig` file text.
    pub fn to_file(&self) -> String {
        let mut b = Vec::with_capacity(SIG_LEN);
        b.extend_from_slice(if self.prehashed { b"ED" } else { b"Ed" });
        b.extend_from_slice(&self.key_id.0);
        b.extend_from_slice(&self.sig);
        format!(
            "untrusted comment: {}\n{}\ntrusted comment: {}\n{}\n",
            self.untrusted_comment,
            B64.encode(b),
            self.trusted_comment,
            B64.encode(self.global)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_verify() {
        let sk = SecretKey::generate().unwrap();
        let sk2 = SecretKey::parse(&sk.to_file()).unwrap();
        assert_eq!(sk2.id, sk.id);
        let pk = PublicKey::parse(&sk.public().to_file()).unwrap();
        assert_eq!(pk, sk.public());
        assert_eq!(PublicKey::parse(&pk.to_base64()).unwrap(), pk);
        let sig = sk2.sign(b"hello", "qpm-test one").unwrap();
        let sig = Signature::parse(&sig.to_file()).unwrap();
        pk.verify(b"hello", &sig).unwrap();
        assert!(matches!(
            pk.verify(b"hellO", &sig),
            Err(Error::BadSignature { .. })
        ));
        let mut forged = sig.clone();
        forged.trusted_comment = "qpm-test two".into();
        assert!(matches!(
            pk.verify(b"hello", &forged),
            Err(Error::BadSignature { .. })
        ));
        let other = SecretKey::generate().unwrap().public();
        assert!(matches!(
            other.verify(b"hello", &sig),
            Err(Error::WrongKey { .. })
        ));
    }

    /// Interoperability with the reference `minisign` tool, both ways.
    #[test]
    fn minisign_tool_agrees() {
        use std::process::Command;
        if Command::new("minisign").arg("-v").output().is_err() {
            assert!(
                std::env::var_os("QPM_REQUIRE_SYSTEM_TESTS").is_none(),
                "minisign is required (QPM_REQUIRE_SYSTEM_TESTS is set)"
            );
            eprintln!("skipped: minisign not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        std::fs::write(p("data"), b"some data\n").unwrap();
        // qpm signs, minisign verifies.
        let sk = SecretKey::generate().unwrap();
        std::fs::write(p("qpm.pub"), sk.public().to_file()).unwrap();
        let sig = sk.sign(b"some data\n", "qpm-test trusted").unwrap();
        std::fs::write(p("data.minisig"), sig.to_file()).unwrap();
        let out = Command::new("minisign")
            .args(["-V", "-p"])
            .arg(p("qpm.pub"))
            .arg("-m")
            .arg(p("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("qpm-test trusted"));
        // qpm's unencrypted secret key signs with minisign; qpm verifies.
        std::fs::write(p("qpm.key"), sk.to_file()).unwrap();
        let out = Command::new("minisign")
            .args(["-S", "-s"])
            .arg(p("qpm.key"))
            .arg("-m")
            .arg(p("data"))
            .args(["-x"])
            .arg(p("m.minisig"))
            .args(["-t", "from minisign"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = Signature::parse(&std::fs::read_to_string(p("m.minisig")).unwrap()).unwrap();
        sk.public().verify(b"some data\n", &s).unwrap();
        assert_eq!(s.trusted_comment, "from minisign");
        // A key made by `minisign -G -W` signs with qpm; minisign verifies.
        let out = Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(p("m.pub"))
            .arg("-s")
            .arg(p("m.key"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let msk = SecretKey::parse(&std::fs::read_to_string(p("m.key")).unwrap()).unwrap();
        let mpk = PublicKey::parse(&std::fs::read_to_string(p("m.pub")).unwrap()).unwrap();
        assert_eq!(msk.public(), mpk);
        let sig = msk.sign(b"some data\n", "qpm with a minisign key").unwrap();
        std::fs::write(p("data.minisig"), sig.to_file()).unwrap();
        let out = Command::new("minisign")
            .args(["-V", "-p"])
            .arg(p("m.pub"))
            .arg("-m")
            .arg(p("data"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn key_id_display_parses_back() {
        let id = KeyId([1, 2, 3, 4, 5, 6, 7, 0xab]);
        assert_eq!(id.to_string(), "AB07060504030201");
        assert_eq!(KeyId::parse(&id.to_string()), Some(id));
    }

    #[test]
    fn damaged_files_are_refused() {
        let sk = SecretKey::generate().unwrap();
        let mut text = sk.to_file();
        // flip one base64 character of the key line
        let i = text.find('\n').unwrap() + 150;
        let c = if &text[i..=i] == "A" { "B" } else { "A" };
        text.replace_range(i..=i, c);
        assert!(SecretKey::parse(&text).is_err());
        assert!(Signature::parse("untrusted comment: x\n").is_err());
        assert!(PublicKey::parse("").is_err());
        assert!(PublicKey::parse("RWQ=").is_err());
    }
}
