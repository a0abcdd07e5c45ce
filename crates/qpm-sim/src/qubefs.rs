//! Each simulated qube's files, and what Qubes does to them at start and
//! shutdown.
//!
//! Layout under `<state>/qubes/<name>/`:
//! * `root/`: the live root, what the qube's services see as `/`
//!   (`QPM_SIM_ROOT`). For a TemplateVM or StandaloneVM it is the root volume
//!   itself and persists; for an AppVM or DispVM it is rebuilt from the
//!   template's root at every start and discarded at shutdown.
//! * `private/`: the private volume (`/rw` in the qube): `home/`,
//!   `usrlocal/`, `config/`, `bind-dirs/`.
//! * `run/binds`: the persistent paths of the current boot.
//!
//! Start of a template-based qube (as `mount-home.sh` and `bind-dirs.sh`):
//! the root is copied from the template, the private volume appears at
//! `/rw`, `/home` and `/usr/local` come from `/rw/home` and `/rw/usrlocal`
//! (first boot: initialised from the template), and every bind-dirs path is
//! taken from its `/rw` copy (`/rw/bind-dirs/<path>`, or under `/rw/home`,
//! `/rw/usrlocal`). With the feature `service.custom-persist` on, only the
//! `custom-persist.*` paths persist (`/home` and `/usr/local` only if
//! listed; a fresh `/home/user` comes from `/etc/skel`) and
//! `/rw/config/qubes-bind-dirs.d` is ignored. Shutdown copies each
//! persistent path back to its `/rw` location and keeps `/rw`; everything
//! else is lost. Copies stand in for bind mounts.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::api::QubeHost;
use crate::model::{Qube, System, VmClass};

/// Files of all qubes under one directory.
#[derive(Debug, Clone)]
pub struct QubeFiles {
    dir: PathBuf,
}

/// Where a persistent path lives in the private volume.
fn rw_location(path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    if let Some(r) = rel.strip_prefix("home/") {
        return Path::new("home").join(r);
    }
    if rel == "home" {
        return PathBuf::from("home");
    }
    if let Some(r) = rel.strip_prefix("usr/local/") {
        return Path::new("usrlocal").join(r);
    }
    if rel == "usr/local" {
        return PathBuf::from("usrlocal");
    }
    Path::new("bind-dirs").join(rel)
}

/// An absolute path without `.`/`..`/empty components, as a relative path.
fn clean_abs(path: &str) -> Option<PathBuf> {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        return None;
    }
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The quoted paths of `binds+=( '/a' "/b" )` lines in bind-dirs configs.
pub(crate) fn parse_bind_conf(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix("binds+=(") else {
            continue;
        };
        let Some(inner) = rest.split(')').next() else {
            continue;
        };
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' || c == '"' {
                let mut s = String::new();
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                    s.push(d);
                }
                out.push(s);
            } else if c == '/' {
                let mut s = String::from('/');
                while let Some(&d) = chars.peek() {
                    if d.is_whitespace() {
                        break;
                    }
                    s.push(d);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    out
}

fn read_confs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        if let Ok(meta) = fs::symlink_metadata(&p)
            && meta.is_file()
            && meta.len() <= 1024 * 1024
            && let Ok(text) = fs::read_to_string(&p)
        {
            out.extend(parse_bind_conf(&text));
        }
    }
    out
}

/// Copies a tree; symlinks are copied as symlinks, modes kept.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src)?;
        std::os::unix::fs::symlink(target, dst)?;
    } else if ft.is_dir() {
        fs::create_dir_all(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        fs::set_permissions(dst, meta.permissions())?;
    } else if ft.is_file() {
        fs::copy(src, dst)?;
    }
    Ok(())
}

/// Removes a file, symlink or tree (never following symlinks).
pub(crate) fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `dst` by a copy of `src` (parents created).
fn replace_with_copy(src: &Path, dst: &Path) -> io::Result<()> {
    remove_any(dst)?;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    copy_tree(src, dst)
}

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// No file anywhere below `dir` (only directories, at most 4 levels deep
/// looked at): a private volume never booted.
fn holds_no_files(dir: &Path, depth: u32) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return true;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                if depth == 0 || !holds_no_files(&e.path(), depth - 1) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// A persistent path of one boot: in-root location and rw location.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bind {
    root_rel: PathBuf,
    rw_rel: PathBuf,
}

/// Skeleton of a fresh root (new templates and standalones).
pub(crate) fn make_skeleton(root: &Path) -> io::Result<()> {
    for d in [
        "etc/qubes-rpc",
        "etc/skel",
        "etc/qubes-bind-dirs.d",
        "usr/lib/qubes-bind-dirs.d",
        "usr/local/etc/qubes-rpc",
        "home/user",
        "rw",
        "tmp",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    let skel = root.join("etc/skel/.bashrc");
    if !exists(&skel) {
        fs::write(&skel, "# .bashrc\n")?;
    }
    let home_rc = root.join("home/user/.bashrc");
    if !exists(&home_rc) {
        fs::copy(&skel, &home_rc)?;
    }
    let os = root.join("etc/os-release");
    if !exists(&os) {
        fs::write(&os, "NAME=\"Simulated Linux\"\nID=qpm-sim\n")?;
    }
    Ok(())
}

impl QubeFiles {
    /// Files under `dir` (`<state>/qubes`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `qubes/<name>`.
    pub fn qube_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The live root of a qube.
    pub fn root(&self, name: &str) -> PathBuf {
        self.qube_dir(name).join("root")
    }

    /// The private volume of a qube.
    pub fn private(&self, name: &str) -> PathBuf {
        self.qube_dir(name).join("private")
    }

    fn ensure(&self, q: &Qube) -> io::Result<()> {
        let private = self.private(&q.name);
        for d in ["home/user", "usrlocal", "config", "bind-dirs"] {
            fs::create_dir_all(private.join(d))?;
        }
        let root = self.root(&q.name);
        fs::create_dir_all(&root)?;
        if matches!(q.class, VmClass::TemplateVM | VmClass::StandaloneVM) {
            make_skeleton(&root)?;
        }
        fs::create_dir_all(self.qube_dir(&q.name).join("run"))
    }

    /// Makes sure every qube has its directories and no directory outlives
    /// its qube (after a crash between a change and its commit).
    pub fn reconcile(&self, sys: &System) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        for q in &sys.qubes {
            if q.class.is_qubesvm() {
                self.ensure(q)?;
            }
        }
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let known = sys
                .find(&name)
                .is_some_and(|qi| sys.qube(qi).class.is_qubesvm());
            if !known {
                remove_any(&e.path())?;
            }
        }
        Ok(())
    }

    /// The root a template-based qube boots from.
    fn base_root(&self, sys: &System, qi: usize) -> Option<PathBuf> {
        let mut t = sys.template_of(qi)?;
        // a disposable's template is an AppVM: use that one's template
        if let Some(tt) = sys.template_of(t) {
            t = tt;
        }
        Some(self.root(&sys.qube(t).name))
    }

    fn persistent_binds(&self, sys: &System, qi: usize, root: &Path) -> (bool, bool, Vec<Bind>) {
        let q = sys.qube(qi);
        let custom = q
            .feature("service.custom-persist")
            .is_some_and(|v| !v.is_empty());
        let mut paths: Vec<String> = Vec::new();
        paths.extend(read_confs(&root.join("usr/lib/qubes-bind-dirs.d")));
        paths.extend(read_confs(&root.join("etc/qubes-bind-dirs.d")));
        let (mut home, mut usrlocal) = (true, true);
        if custom {
            home = false;
            usrlocal = false;
            for (k, v) in &q.features {
                if !k.starts_with("custom-persist.") {
                    continue;
                }
                let path = if v.starts_with('/') {
                    v.clone()
                } else {
                    v.splitn(5, ':').nth(4).unwrap_or_default().to_string()
                };
                match path.as_str() {
                    "/home" => home = true,
                    "/usr/local" => usrlocal = true,
                    _ => paths.push(path),
                }
            }
        } else {
            paths.extend(read_confs(&root.join("rw/config/qubes-bind-dirs.d")));
        }
        let mut binds = Vec::new();
        for p in paths {
            let Some(rel) = clean_abs(&p) else { continue };
            let b = Bind {
                rw_rel: rw_location(&p),
                root_rel: rel,
            };
            if !binds.contains(&b) {
                binds.push(b);
            }
        }
        (home, usrlocal, binds)
    }

    fn pre_create_custom(&self, q: &Qube, rw: &Path, root: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for (k, v) in &q.features {
            if !k.starts_with("custom-persist.") || v.starts_with('/') {
                continue;
            }
            let f: Vec<&str> = v.splitn(5, ':').collect();
            let [kind, _, _, mode, path] = f.as_slice() else {
                continue;
            };
            let Some(rel) = clean_abs(path) else { continue };
            let rwp = rw.join(rw_location(path));
            if exists(&root.join(&rel)) || exists(&rwp) {
                continue;
            }
            if let Some(parent) = rwp.parent() {
                fs::create_dir_all(parent)?;
            }
            if *kind == "dir" {
                fs::create_dir_all(&rwp)?;
            } else {
                fs::write(&rwp, b"")?;
            }
            if let Ok(m) = u32::from_str_radix(mode, 8) {
                fs::set_permissions(&rwp, fs::Permissions::from_mode(m))?;
            }
        }
        Ok(())
    }

    fn boot(&self, sys: &System, qi: usize) -> io::Result<()> {
        let q = sys.qube(qi);
        self.ensure(q)?;
        if !q.class.has_template() {
            return Ok(());
        }
        let root = self.root(&q.name);
        remove_any(&root)?;
        match self.base_root(sys, qi) {
            Some(base) if exists(&base) => copy_tree(&base, &root)?,
            _ => make_skeleton(&root)?,
        }
        // the private volume: the qube's own, or a disposable's template's
        let private = if q.class == VmClass::DispVM {
            sys.template_of(qi)
                .map(|t| self.private(&sys.qube(t).name))
                .unwrap_or_else(|| self.private(&q.name))
        } else {
            self.private(&q.name)
        };
        let rw = root.join("rw");
        remove_any(&rw)?;
        if exists(&private) {
            copy_tree(&private, &rw)?;
        } else {
            fs::create_dir_all(&rw)?;
        }
        let (home, usrlocal, binds) = self.persistent_binds(sys, qi, &root);
        if home {
            let rw_home = rw.join("home");
            if holds_no_files(&rw_home, 4) && exists(&root.join("home")) {
                replace_with_copy(&root.join("home"), &rw_home)?;
            }
            replace_with_copy(&rw_home, &root.join("home"))?;
        } else {
            remove_any(&root.join("home"))?;
            let skel = root.join("etc/skel");
            if exists(&skel) {
                replace_with_copy(&skel, &root.join("home/user"))?;
            } else {
                fs::create_dir_all(root.join("home/user"))?;
            }
        }
        if usrlocal {
            let rw_ul = rw.join("usrlocal");
            if holds_no_files(&rw_ul, 4) && exists(&root.join("usr/local")) {
                replace_with_copy(&root.join("usr/local"), &rw_ul)?;
            }
            replace_with_copy(&rw_ul, &root.join("usr/local"))?;
        }
        if q.feature("service.custom-persist")
            .is_some_and(|v| !v.is_empty())
        {
            self.pre_create_custom(q, &rw, &root)?;
        }
        let mut active = Vec::new();
        for b in &binds {
            let rwp = rw.join(&b.rw_rel);
            let rop = root.join(&b.root_rel);
            if !exists(&rwp) {
                if !exists(&rop) {
                    continue;
                }
                replace_with_copy(&rop, &rwp)?;
            }
            replace_with_copy(&rwp, &rop)?;
            active.push(b.clone());
        }
        let mut record = String::new();
        if home {
            record.push_str("home\thome\n");
        }
        if usrlocal {
            record.push_str("usr/local\tusrlocal\n");
        }
        for b in active {
            record.push_str(&format!(
                "{}\t{}\n",
                b.root_rel.display(),
                b.rw_rel.display()
            ));
        }
        fs::write(self.qube_dir(&q.name).join("run/binds"), record)
    }

    fn shutdown(&self, sys: &System, qi: usize) -> io::Result<()> {
        let q = sys.qube(qi);
        if !q.class.has_template() || q.class == VmClass::DispVM {
            return Ok(());
        }
        let root = self.root(&q.name);
        let rw = root.join("rw");
        if !exists(&rw) {
            return Ok(());
        }
        let record =
            fs::read_to_string(self.qube_dir(&q.name).join("run/binds")).unwrap_or_default();
        for line in record.lines() {
            let Some((r, w)) = line.split_once('\t') else {
                continue;
            };
            let (r, w) = (Path::new(r), Path::new(w));
            if r.components().any(|c| !matches!(c, Component::Normal(_)))
                || w.components().any(|c| !matches!(c, Component::Normal(_)))
            {
                continue;
            }
            let rop = root.join(r);
            if exists(&rop) {
                replace_with_copy(&rop, &rw.join(w))?;
            }
        }
        replace_with_copy(&rw, &self.private(&q.name))
    }
}

impl QubeHost for QubeFiles {
    fn created(&mut self, sys: &System, qi: usize) -> Result<(), String> {
        let q = sys.qube(qi);
        if !q.class.is_qubesvm() {
            return Ok(());
        }
        // a name reused after a crash: start clean
        remove_any(&self.qube_dir(&q.name)).map_err(|e| e.to_string())?;
        self.ensure(q).map_err(|e| e.to_string())?;
        if q.class == VmClass::AppVM
            && let Some(t) = sys.template_of(qi)
        {
            let tpl_home = self.root(&sys.qube(t).name).join("home");
            if exists(&tpl_home) {
                replace_with_copy(&tpl_home, &self.private(&q.name).join("home"))
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn removed(&mut self, qube: &Qube) {
        if let Err(e) = remove_any(&self.qube_dir(&qube.name)) {
            tracing::warn!("removing files of {:?}: {e}", qube.name);
        }
    }

    fn starting(&mut self, sys: &System, qi: usize) -> Result<(), String> {
        self.boot(sys, qi).map_err(|e| e.to_string())
    }

    fn stopped(&mut self, sys: &System, qi: usize) {
        if let Err(e) = self.shutdown(sys, qi) {
            tracing::warn!("saving files of {:?}: {e}", sys.qube(qi).name);
        }
    }

    fn clone_volume(&mut self, sys: &System, src: usize, src_vol: &str, dst: usize, dst_vol: &str) {
        let (s, d) = (&sys.qube(src).name, &sys.qube(dst).name);
        let pick = |name: &str, vol: &str| match vol {
            "private" => Some(self.private(name)),
            "root" => Some(self.root(name)),
            _ => None,
        };
        if let (Some(from), Some(to)) = (pick(s, src_vol), pick(d, dst_vol))
            && let Err(e) = replace_with_copy(&from, &to)
        {
            tracing::warn!("cloning {s}:{src_vol} to {d}:{dst_vol}: {e}");
        }
    }

    fn clear_volume(&mut self, sys: &System, qi: usize, vol: &str) {
        let name = &sys.qube(qi).name;
        let p = match vol {
            "private" => self.private(name),
            "root" => self.root(name),
            _ => return,
        };
        if let Err(e) = remove_any(&p).and_then(|()| fs::create_dir_all(&p)) {
            tracing::warn!("clearing {name}:{vol}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_conf() {
        let t = "# comment\nbinds+=( '/etc/a' )\nbinds+=( \"/var/b\" '/c d' )\nbinds+=( /x/y )\nother=1\n";
        assert_eq!(parse_bind_conf(t), vec!["/etc/a", "/var/b", "/c d", "/x/y"]);
    }

    #[test]
    fn locations() {
        assert_eq!(
            rw_location("/home/user/.bashrc"),
            PathBuf::from("home/user/.bashrc")
        );
        assert_eq!(
            rw_location("/usr/local/bin/x"),
            PathBuf::from("usrlocal/bin/x")
        );
        assert_eq!(
            rw_location("/etc/foo.conf"),
            PathBuf::from("bind-dirs/etc/foo.conf")
        );
        assert_eq!(clean_abs("/etc/../x"), None);
        assert_eq!(clean_abs("rel"), None);
        assert_eq!(clean_abs("/"), None);
        assert_eq!(clean_abs("/a//b/"), Some(PathBuf::from("a/b")));
    }
}
