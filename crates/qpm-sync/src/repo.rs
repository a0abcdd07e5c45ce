//! The configuration repository in the config qube: a directory tree plus
//! `qpm-sync.toml`, the map of which files go to which qubes.
//!
//! ```toml
//! [[file]]
//! src = "git/gitconfig"      # file or directory in the repository
//! dest = "~/.gitconfig"      # `~/...` home of the qube's user, `/...` system path
//! to = ["work", "@tag:dev"]  # qube names and tags
//! mode = "0644"              # default 0644 (files of a directory keep 0644 or 0755 if executable)
//!
//! [[file]]
//! src = "app/app.conf"
//! dest = "/etc/app/app.conf"
//! to = ["work"]
//! owner = 0                  # system paths only: numeric uid/gid
//! group = 0
//! persist = true             # survive restarts (bind-dirs or custom-persist)
//!
//! [[file]]
//! src = "secrets/netrc"
//! dest = "~/.netrc"
//! to = ["work"]
//! mode = "0600"
//! secret = true              # never printed, diffs say only that it changed
//! ```

use std::path::{Path, PathBuf};

use qpm_fs::{Kind as FKind, RelPath, Root};

use crate::proto::Tree;

/// Name of the map file at the repository root.
pub const MAP_FILE: &str = "qpm-sync.toml";
/// Largest map file.
pub const MAX_MAP_BYTES: u64 = 1024 * 1024;

/// Errors reading the repository.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The map is invalid.
    #[error("{file}: {message}")]
    Map {
        /// File (with line when known).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Filesystem error.
    #[error(transparent)]
    Fs(#[from] qpm_fs::Error),
}

type Result<T> = std::result::Result<T, RepoError>;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    #[serde(default)]
    file: Vec<RawFile>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    src: String,
    dest: String,
    to: Vec<String>,
    mode: Option<String>,
    owner: Option<u32>,
    group: Option<u32>,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    persist: bool,
}

/// One mapping of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Source in the repository.
    pub src: RelPath,
    /// Destination tree.
    pub tree: Tree,
    /// Destination path in the tree.
    pub dest: RelPath,
    /// Qube names and `@tag:` selectors.
    pub to: Vec<String>,
    /// Mode (None: 0644, or 0755 for executable files of a directory).
    pub mode: Option<u16>,
    /// Owner (system paths).
    pub uid: u32,
    /// Group (system paths).
    pub gid: u32,
    /// Secret.
    pub secret: bool,
    /// Persist across restarts (system paths).
    pub persist: bool,
}

/// A file to push, resolved for one qube.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Path in the repository.
    pub src: RelPath,
    /// Destination tree.
    pub tree: Tree,
    /// Destination path.
    pub dest: RelPath,
    /// Mode.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Secret.
    pub secret: bool,
    /// Persist.
    pub persist: bool,
    /// Metadata of the source seen while listing the repository (lets the
    /// sender's stat cache skip a second `stat`).
    pub stat: Option<qpm_fs::Meta>,
}

impl Item {
    /// `~/x` or `/x`, escaped.
    pub fn display(&self) -> String {
        format!("{}{}", self.tree.prefix(), self.dest)
    }
}

/// A loaded repository.
#[derive(Debug)]
pub struct Repo {
    root: Root,
    path: PathBuf,
    /// The mappings, in file order.
    pub mappings: Vec<Mapping>,
}

fn parse_dest(s: &str) -> std::result::Result<(Tree, RelPath), String> {
    let (tree, rest) = if let Some(r) = s.strip_prefix("~/") {
        (Tree::Home, r)
    } else if let Some(r) = s.strip_prefix('/') {
        (Tree::System, r)
    } else {
        return Err(format!(
            "dest must start with `~/` or `/`: `{}`",
            s.escape_debug()
        ));
    };
    RelPath::new(rest.trim_end_matches('/'))
        .map(|p| (tree, p))
        .map_err(|e| e.to_string())
}

impl Repo {
    /// Loads the repository at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let root = Root::open(path)?;
        let file = path.join(MAP_FILE).display().to_string();
        let text = root.read_limited(&RelPath::new(MAP_FILE)?, MAX_MAP_BYTES)?;
        let text = String::from_utf8(text).map_err(|_| RepoError::Map {
            file: file.clone(),
            message: "not UTF-8".into(),
        })?;
        let raw: RawMap = toml::from_str(&text).map_err(|e| RepoError::Map {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let mut mappings = Vec::new();
        for (i, f) in raw.file.into_iter().enumerate() {
            let at = |m: String| RepoError::Map {
                file: format!("{file} [[file]] #{}", i + 1),
                message: m,
            };
            let src = RelPath::new(f.src.trim_end_matches('/')).map_err(|e| at(e.to_string()))?;
            let (tree, dest) = parse_dest(&f.dest).map_err(at)?;
            let mode = match &f.mode {
                None => None,
                Some(m) => {
                    let v = u16::from_str_radix(m.trim_start_matches("0o"), 8)
                        .map_err(|_| at(format!("mode is not octal: `{}`", m.escape_debug())))?;
                    if v & !0o777 != 0 {
                        return Err(at(format!(
                            "mode `{m}` has setuid, setgid or sticky bits (not synced)"
                        )));
                    }
                    Some(v)
                }
            };
            if tree == Tree::Home && (f.owner.is_some() || f.group.is_some() || f.persist) {
                return Err(at("owner, group and persist apply to system paths only (home files belong to the qube's user and persist anyway)".into()));
            }
            if f.to.is_empty() {
                return Err(at("`to` is empty".into()));
            }
            for t in &f.to {
                let name = t.strip_prefix("@tag:").unwrap_or(t);
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(at(format!("invalid qube or tag `{}`", t.escape_debug())));
                }
            }
            mappings.push(Mapping {
                src,
                tree,
                dest,
                to: f.to,
                mode,
                uid: f.owner.unwrap_or(0),
                gid: f.group.unwrap_or(0),
                secret: f.secret,
                persist: f.persist,
            });
        }
        Ok(Self {
            root,
            path: path.to_owned(),
            mappings,
        })
    }

    /// A directory of files to push without a map (a package's files,
    /// whose items the caller builds itself).
    pub fn from_dir(path: &Path) -> Result<Self> {
        Ok(Self {
            root: Root::open(path)?,
            path: path.to_owned(),
            mappings: Vec::new(),
        })
    }

    /// The repository's root handle.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The repository path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Qubes named explicitly in the map.
    pub fn named_qubes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .mappings
            .iter()
            .flat_map(|m| m.to.iter())
            .filter(|t| !t.starts_with("@tag:"))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether the map uses tags.
    pub fn uses_tags(&self) -> bool {
        self.mappings
            .iter()
            .any(|m| m.to.iter().any(|t| t.starts_with("@tag:")))
    }

    /// Files for `qube` with `tags`, sorted by destination. Directories are
    /// walked (iteratively; symlinks and special files in the repository
    /// are refused).
    pub fn items_for(&self, qube: &str, tags: &[String]) -> Result<Vec<Item>> {
        let mut out: Vec<Item> = Vec::new();
        let mut listings = Vec::new();
        for m in &self.mappings {
            let hit = m.to.iter().any(|t| match t.strip_prefix("@tag:") {
                Some(tag) => tags.iter().any(|x| x == tag),
                None => t == qube,
            });
            if !hit {
                continue;
            }
            let meta = self.root.metadata(&m.src)?.ok_or_else(|| RepoError::Map {
                file: MAP_FILE.into(),
                message: format!("source `{}` does not exist", m.src),
            })?;
            match meta.kind {
                FKind::File => out.push(self.item(m, m.src.clone(), m.dest.clone(), meta)),
                FKind::Dir => {
                    let mut dir = self.root.open_dir(&m.src)?;
                    self.walk(m, &mut dir, &m.src, &m.dest, &mut listings, 0, &mut out)?;
                }
                _ => {
                    return Err(RepoError::Map {
                        file: MAP_FILE.into(),
                        message: format!("source `{}` is not a regular file or directory", m.src),
                    });
                }
            }
        }
        // One directory mapping is walked in path order already.
        fn key(i: &Item) -> (Tree, &str) {
            (i.tree, i.dest.as_str())
        }
        if !out.is_sorted_by(|a, b| key(a) <= key(b)) {
            out.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
        }
        for w in out.windows(2) {
            if let [a, b] = w {
                if a.tree == b.tree && a.dest == b.dest {
                    return Err(RepoError::Map {
                        file: MAP_FILE.into(),
                        message: format!("{} is mapped twice for qube `{qube}`", a.display()),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Adds the files below `dir` (source `src_dir`, destination
    /// `dest_dir`) to `out`, depth first in path order, so they come out
    /// sorted. One handle per directory, listed through itself; every entry
    /// is `stat`ed once, relative to it. `listings[depth]` is reused from
    /// one directory to the next; the depth is bounded by the path limits.
    #[allow(clippy::too_many_arguments, reason = "one recursive walk's state")]
    fn walk(
        &self,
        m: &Mapping,
        dir: &mut Root,
        src_dir: &RelPath,
        dest_dir: &RelPath,
        listings: &mut Vec<qpm_fs::Listing>,
        depth: usize,
        out: &mut Vec<Item>,
    ) -> Result<()> {
        if listings.len() <= depth {
            listings.resize_with(depth + 1, Default::default);
        }
        let mut listing = listings
            .get_mut(depth)
            .map(std::mem::take)
            .unwrap_or_default();
        dir.list(&mut listing)?;
        for (raw, kind) in listing.iter() {
            let Ok(name) = std::str::from_utf8(raw) else {
                return Err(RepoError::Map {
                    file: MAP_FILE.into(),
                    message: format!(
                        "`{src_dir}/{}` is not a UTF-8 name; only UTF-8 names are synced",
                        String::from_utf8_lossy(raw).escape_debug()
                    ),
                });
            };
            let src = src_dir.join_name(name)?;
            match kind {
                FKind::Dir => {
                    let mut sub = dir.open_dir(&RelPath::new(name)?)?;
                    let dest = dest_dir.join_name(name)?;
                    self.walk(m, &mut sub, &src, &dest, listings, depth + 1, out)?;
                }
                FKind::File => {
                    let Some(meta) = dir.metadata_name(name)? else {
                        continue;
                    };
                    if meta.kind != FKind::File {
                        return Err(RepoError::Map {
                            file: MAP_FILE.into(),
                            message: format!("`{src}` changed while listing"),
                        });
                    }
                    out.push(self.item(m, src, dest_dir.join_name(name)?, meta));
                }
                _ => {
                    return Err(RepoError::Map {
                        file: MAP_FILE.into(),
                        message: format!(
                            "`{src}` is a symlink or special file; only regular files are synced"
                        ),
                    });
                }
            }
        }
        if let Some(slot) = listings.get_mut(depth) {
            *slot = listing;
        }
        Ok(())
    }

    fn item(&self, m: &Mapping, src: RelPath, dest: RelPath, meta: qpm_fs::Meta) -> Item {
        let mode = m
            .mode
            .unwrap_or(if meta.mode & 0o111 != 0 { 0o755 } else { 0o644 });
        Item {
            src,
            tree: m.tree,
            dest,
            mode,
            uid: m.uid,
            gid: m.gid,
            secret: m.secret,
            persist: m.persist,
            stat: Some(meta),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_resolves_names_tags_and_dirs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("app/sub")).unwrap();
        std::fs::write(d.path().join("gitconfig"), "[user]\n").unwrap();
        std::fs::write(d.path().join("app/a.conf"), "a").unwrap();
        std::fs::write(d.path().join("app/sub/b.conf"), "b").unwrap();
        std::fs::write(
            d.path().join(MAP_FILE),
            "[[file]]\nsrc = \"gitconfig\"\ndest = \"~/.gitconfig\"\nto = [\"work\", \"@tag:dev\"]\n\n[[file]]\nsrc = \"app\"\ndest = \"/etc/app\"\nto = [\"@tag:dev\"]\npersist = true\nmode = \"0640\"\n",
        )
        .unwrap();
        let r = Repo::load(d.path()).unwrap();
        let w = r.items_for("work", &[]).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].display(), "~/.gitconfig");
        let dev = r.items_for("other", &["dev".into()]).unwrap();
        let names: Vec<_> = dev.iter().map(Item::display).collect();
        assert_eq!(
            names,
            ["~/.gitconfig", "/etc/app/a.conf", "/etc/app/sub/b.conf"]
        );
        assert_eq!(dev[1].mode, 0o640);
        assert!(r.items_for("nobody", &[]).unwrap().is_empty());
    }

    #[test]
    fn a_directory_is_walked_in_path_order() {
        let d = tempfile::tempdir().unwrap();
        for f in ["b-x", "b/y", "b/y-z/1", "b/y.a", "b0", "a", "b.c/d"] {
            let p = d.path().join("app").join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        std::fs::write(
            d.path().join(MAP_FILE),
            "[[file]]\nsrc = \"app\"\ndest = \"/etc/app\"\nto = [\"work\"]\n",
        )
        .unwrap();
        let r = Repo::load(d.path()).unwrap();
        let got: Vec<String> = r
            .items_for("work", &[])
            .unwrap()
            .iter()
            .map(|i| i.dest.to_string())
            .collect();
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(got.len(), 7);
        assert_eq!(got[0], "etc/app/a");
    }

    #[test]
    fn names_that_cannot_be_synced_are_refused_by_name() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("app/sub")).unwrap();
        std::fs::write(d.path().join("app/sub/ok.conf"), "a").unwrap();
        std::fs::write(
            d.path().join(MAP_FILE),
            "[[file]]\nsrc = \"app\"\ndest = \"~/.config/app\"\nto = [\"work\"]\n",
        )
        .unwrap();
        let r = Repo::load(d.path()).unwrap();
        let items = r.items_for("work", &[]).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].src.as_str(), "app/sub/ok.conf");
        assert_eq!(items[0].display(), "~/.config/app/sub/ok.conf");
        let bad = d
            .path()
            .join("app/sub")
            .join(std::ffi::OsStr::from_bytes(b"x\xff.conf"));
        std::fs::write(&bad, "b").unwrap();
        let e = r.items_for("work", &[]).unwrap_err().to_string();
        assert!(
            e.contains("app/sub/x\u{fffd}.conf") && e.contains("not a UTF-8 name"),
            "{e}"
        );
        std::fs::remove_file(&bad).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("app/sub/link")).unwrap();
        let e = r.items_for("work", &[]).unwrap_err().to_string();
        assert!(e.contains("`app/sub/link` is a symlink"), "{e}");
    }

    #[test]
    fn map_errors_name_the_entry() {
        let d = tempfile::tempdir().unwrap();
        for (bad, want) in [
            (
                "[[file]]\nsrc = \"x\"\ndest = \"etc/x\"\nto = [\"a\"]\n",
                "dest must start",
            ),
            (
                "[[file]]\nsrc = \"x\"\ndest = \"~/x\"\nto = [\"a\"]\nmode = \"4755\"\n",
                "setuid",
            ),
            (
                "[[file]]\nsrc = \"x\"\ndest = \"~/x\"\nto = [\"a\"]\npersist = true\n",
                "system paths only",
            ),
            (
                "[[file]]\nsrc = \"../x\"\ndest = \"~/x\"\nto = [\"a\"]\n",
                "dot component",
            ),
            (
                "[[file]]\nsrc = \"x\"\ndest = \"~/x\"\nto = [\"a b\"]\n",
                "invalid qube",
            ),
        ] {
            std::fs::write(d.path().join(MAP_FILE), bad).unwrap();
            let e = Repo::load(d.path()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("#1"), "{e}");
        }
    }
}
