//! Repository commands: `qpm repo ...`, `qpm key ...`, `qpm package build`,
//! `qpm update`, `qpm search`, `qpm info`, `qpm download`. Top-level
//! (flattened into the root).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use qpm_repo::client::{Client, UpdateStatus};
use qpm_repo::paths::Paths;
use qpm_repo::sign::{PublicKey, SecretKey};
use qpm_repo::{PackageSpec, publish};

use crate::ctx::{Ctx, Status};

#[derive(Debug, Subcommand)]
pub(crate) enum RepoTopCommand {
    /// Add, list, remove and publish package repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Repository signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Package archives.
    #[command(subcommand)]
    Package(PackageCommand),
    /// Refresh the indexes of the configured repositories.
    Update(UpdateArgs),
    /// Search the packages of the configured repositories.
    Search(SearchArgs),
    /// Show a package's details and versions.
    Info(InfoArgs),
    /// Download a package archive from its repository and verify it.
    Download(DownloadArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum RepoCommand {
    /// Add a repository: `https://...` (through the proxy), `file:///...` or a
    /// path (USB stick, air-gapped copy).
    Add {
        /// Short name for it (`[a-z][a-z0-9-]*`).
        name: String,
        /// Where it is.
        url: String,
        /// Its public key: a minisign `.pub` file, or the key itself (`RW...`).
        #[arg(long, value_name = "PUBKEY")]
        key: String,
    },
    /// List the configured repositories and the state of their indexes.
    List,
    /// Remove a repository and everything stored about it.
    Remove {
        /// Its name.
        name: String,
    },
    /// Build or refresh a repository directory: archive the packages given
    /// (package directories, archives, or directories holding them), then
    /// sign a new index. Published versions are kept and never change.
    Build {
        /// The repository directory (created if needed).
        dir: PathBuf,
        /// The secret signing key (`qpm key generate`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Packages to add.
        packages: Vec<PathBuf>,
        /// When the signed index expires: a duration (`30d`, `12h`) or a
        /// date (`2027-01-31T00:00:00Z`). Clients refuse an expired index,
        /// so rebuild before then.
        #[arg(long, default_value = "30d")]
        expires: String,
        /// Index version to write (default: the published one plus one).
        #[arg(long, value_name = "N")]
        index_version: Option<u64>,
    },
    /// Publish a key rotation: the new public key, signed by the old key.
    /// Then sign the next build with the new key; clients follow.
    RotateKey {
        /// The repository directory.
        dir: PathBuf,
        /// The current (old) secret key.
        #[arg(long, value_name = "KEY")]
        old: PathBuf,
        /// The new public key.
        #[arg(long, value_name = "PUBKEY")]
        new: PathBuf,
    },
    /// Let package PKG come from repository REPO even if another
    /// configured repository provides that name.
    Pin {
        /// Package name.
        package: String,
        /// Repository name.
        repo: String,
    },
    /// Remove a pin.
    Unpin {
        /// Package name.
        package: String,
    },
    /// Set the HTTP proxy (the qube's updates proxy, e.g.
    /// `http://127.0.0.1:8082/`), or clear it with `--none`.
    Proxy {
        /// Proxy URL.
        #[arg(required_unless_present = "none")]
        url: Option<String>,
        /// Fetch directly.
        #[arg(long, conflicts_with = "url")]
        none: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate a signing key pair: PREFIX.key (secret, mode 0600, not
    /// encrypted: keep it offline) and PREFIX.pub (give it to users). Both
    /// are minisign files.
    Generate {
        /// Path prefix of the two files.
        #[arg(long, short, default_value = "qpm-repo")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PackageCommand {
    /// Build the reproducible archive (`NAME-VERSION.qpm`) of a package
    /// directory.
    Build {
        /// The package directory (holding `qpm.toml`).
        dir: PathBuf,
        /// Where to write the archive.
        #[arg(long, short, default_value = ".")]
        out_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// Only these repositories.
    repos: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SearchArgs {
    /// Text to look for in names and summaries (none: list everything).
    query: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// `NAME` or `NAME@VERSION`.
    package: String,
}

#[derive(Debug, Args)]
pub(crate) struct DownloadArgs {
    /// `NAME` or `NAME@VERSION` (a version or a requirement such as `^2`).
    package: String,
    /// Directory to put the archive in.
    #[arg(long, short, default_value = ".")]
    out_dir: PathBuf,
}

pub(crate) fn run(cmd: RepoTopCommand, ctx: &Ctx) -> Result<Status> {
    match cmd {
        RepoTopCommand::Repo(c) => repo(c, ctx),
        RepoTopCommand::Key(KeyCommand::Generate { out }) => key_generate(&out, ctx),
        RepoTopCommand::Package(PackageCommand::Build { dir, out_dir }) => {
            let b = publish::build_package(&dir, &out_dir)?;
            if ctx.json {
                print_json(&b)?;
            } else {
                println!("{}", b.path.display());
                note(
                    ctx,
                    &format!(
                        "{} {}: {} bytes, sha256 {}",
                        b.name, b.version, b.size, b.sha256
                    ),
                );
            }
            Ok(Status::Success)
        }
        RepoTopCommand::Update(a) => update(&a, ctx),
        RepoTopCommand::Search(a) => search(&a, ctx),
        RepoTopCommand::Info(a) => info(&a, ctx),
        RepoTopCommand::Download(a) => download(&a, ctx),
    }
}

fn client() -> Result<Client> {
    Ok(Client::open(Paths::from_env()?)?)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// A message on stderr unless `--quiet`.
fn note(ctx: &Ctx, msg: &str) {
    if !ctx.quiet {
        eprintln!("{msg}");
    }
}

fn progress_wanted(ctx: &Ctx) -> bool {
    !ctx.json && !ctx.quiet && std::io::stderr().is_terminal()
}

/// A byte progress bar on stderr, created on first use, only on a terminal.
struct Bar {
    on: bool,
    label: String,
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    fn new(ctx: &Ctx, label: String) -> Self {
        Self {
            on: progress_wanted(ctx),
            label,
            bar: None,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        if !self.on {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                b.set_style(style);
            }
            b.set_message(self.label.clone());
            b
        });
        bar.set_position(done);
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn read_public_key(arg: &str) -> Result<PublicKey> {
    let p = Path::new(arg);
    if p.is_file() {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading `{arg}`"))?;
        return PublicKey::parse(&text).with_context(|| format!("reading `{arg}`"));
    }
    PublicKey::parse(arg).context("--key is neither a readable key file nor a public key (`RW...`)")
}

fn read_secret_key(p: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading `{}`", p.display()))?;
    SecretKey::parse(&text).with_context(|| format!("reading `{}`", p.display()))
}

fn parse_expiry(s: &str, now: u64) -> Result<u64> {
    if let Ok(d) = humantime_duration(s) {
        return Ok(now.saturating_add(d));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("--expires: neither a duration (`30d`) nor a date: `{s}`"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

fn humantime_duration(s: &str) -> Result<u64> {
    Ok(humantime::parse_duration(s)?.as_secs())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn repo(cmd: RepoCommand, ctx: &Ctx) -> Result<Status> {
    match cmd {
        RepoCommand::Add { name, url, key } => {
            let key = read_public_key(&key)?;
            let mut c = client()?;
            let r = c.add_repo(&name, &url, &key)?;
            if ctx.json {
                print_json(&r)?;
            } else {
                note(
                    ctx,
                    &format!(
                        "added repository `{}` ({}) trusting key {}\nhint: run `qpm update` to fetch its index",
                        r.name, r.url, key.id
                    ),
                );
            }
            Ok(Status::Success)
        }
        RepoCommand::List => {
            let c = client()?;
            let rows = c.list();
            if ctx.json {
                print_json(&serde_json::json!({ "version": 1, "repos": rows }))?;
                return Ok(Status::Success);
            }
            if rows.is_empty() {
                note(
                    ctx,
                    "no repositories (add one with `qpm repo add NAME URL --key PUBKEY`)",
                );
                return Ok(Status::Success);
            }
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<16} {:>8} {:>8}  {:<20}  {:<16}  URL",
                "NAME", "INDEX", "PKGS", "EXPIRES", "KEY"
            )?;
            for r in rows {
                let exp = match r.expires {
                    Some(t) if r.expired => format!("EXPIRED {}", qpm_repo::format_time(t)),
                    Some(t) => qpm_repo::format_time(t),
                    None => "-".into(),
                };
                writeln!(
                    out,
                    "{:<16} {:>8} {:>8}  {:<20}  {:<16}  {}",
                    r.name,
                    r.version.map_or("-".into(), |v| v.to_string()),
                    r.packages.map_or("-".into(), |v| v.to_string()),
                    exp,
                    r.current_key,
                    r.url.escape_debug()
                )?;
                if let Some(e) = r.error {
                    note(ctx, &format!("warning: repository `{}`: {e}", r.name));
                }
            }
            Ok(Status::Success)
        }
        RepoCommand::Remove { name } => {
            let mut c = client()?;
            c.remove_repo(&name)?;
            note(ctx, &format!("removed repository `{name}`"));
            Ok(Status::Success)
        }
        RepoCommand::Build {
            dir,
            key,
            packages,
            expires,
            index_version,
        } => {
            let sk = read_secret_key(&key)?;
            let now = now();
            let expires = parse_expiry(&expires, now)?;
            if expires <= now {
                note(
                    ctx,
                    "warning: the index expires in the past: clients will refuse it",
                );
            }
            let rep = publish::build_repository(
                &dir,
                &packages,
                &sk,
                &publish::BuildOptions {
                    expires,
                    version: index_version,
                },
            )?;
            if ctx.json {
                print_json(&rep)?;
            } else {
                for a in &rep.added {
                    note(ctx, &format!("added {a}"));
                }
                note(
                    ctx,
                    &format!(
                        "{}: index version {} with {} package versions, signed by {}, expires {}",
                        rep.repo.display(),
                        rep.version,
                        rep.packages,
                        rep.key,
                        rep.expires_at
                    ),
                );
            }
            Ok(Status::Success)
        }
        RepoCommand::RotateKey { dir, old, new } => {
            let old = read_secret_key(&old)?;
            let new = read_public_key(&new.to_string_lossy())?;
            let (p, s) = publish::rotate_key(&dir, &old, &new)?;
            note(
                ctx,
                &format!(
                    "wrote {} and {} (key {} signed by {})\nhint: sign the next `qpm repo build` with the new key",
                    p.display(),
                    s.display(),
                    new.id,
                    old.id
                ),
            );
            Ok(Status::Success)
        }
        RepoCommand::Pin { package, repo } => {
            let mut c = client()?;
            c.pin(&package, Some(&repo))?;
            note(
                ctx,
                &format!("package `{package}` now comes from repository `{repo}`"),
            );
            Ok(Status::Success)
        }
        RepoCommand::Unpin { package } => {
            let mut c = client()?;
            c.pin(&package, None)?;
            note(ctx, &format!("unpinned `{package}`"));
            Ok(Status::Success)
        }
        RepoCommand::Proxy { url, none } => {
            let mut c = client()?;
            let url = if none { None } else { url };
            c.set_proxy(url.as_deref())?;
            note(
                ctx,
                &match url {
                    Some(u) => format!("proxy set to {u}"),
                    None => "proxy cleared".into(),
                },
            );
            Ok(Status::Success)
        }
    }
}

fn key_generate(prefix: &Path, ctx: &Ctx) -> Result<Status> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let sk = SecretKey::generate()?;
    let base = prefix.to_string_lossy();
    let (skp, pkp) = (
        PathBuf::from(format!("{base}.key")),
        PathBuf::from(format!("{base}.pub")),
    );
    for p in [&skp, &pkp] {
        if p.exists() {
            bail!(
                "`{}` already exists; refusing to overwrite a key",
                p.display()
            );
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&skp)
        .with_context(|| format!("creating `{}`", skp.display()))?;
    f.write_all(sk.to_file().as_bytes())?;
    f.sync_all()?;
    std::fs::write(&pkp, sk.public().to_file())
        .with_context(|| format!("writing `{}`", pkp.display()))?;
    if ctx.json {
        print_json(&serde_json::json!({
            "key_id": sk.id.to_string(),
            "public_key": sk.public().to_base64(),
            "secret_key_file": skp,
            "public_key_file": pkp,
        }))?;
    } else {
        println!("{}", sk.public().to_base64());
        note(
            ctx,
            &format!(
                "key {}: secret key in {} (keep it offline), public key in {}",
                sk.id,
                skp.display(),
                pkp.display()
            ),
        );
    }
    Ok(Status::Success)
}

fn update(a: &UpdateArgs, ctx: &Ctx) -> Result<Status> {
    let mut c = client()?;
    if c.config().repos.is_empty() {
        note(
            ctx,
            "no repositories configured (add one with `qpm repo add NAME URL --key PUBKEY`)",
        );
        return Ok(Status::Success);
    }
    let mut bar = Bar::new(ctx, "index".into());
    let reports = c.update(&a.repos, &mut |repo, done, total| {
        if bar.label != repo {
            bar.finish();
            bar.label = repo.to_owned();
        }
        bar.update(done, total);
    })?;
    bar.finish();
    let failed = reports
        .iter()
        .any(|r| r.status == UpdateStatus::Failed || !r.refused.is_empty());
    if ctx.json {
        print_json(&serde_json::json!({ "version": 1, "repos": reports }))?;
    } else {
        for r in &reports {
            let exp = r.expires.map(qpm_repo::format_time).unwrap_or_default();
            match r.status {
                UpdateStatus::Unchanged => note(
                    ctx,
                    &format!(
                        "{}: unchanged (index version {}, {} package versions, expires {exp})",
                        r.repo,
                        r.version.unwrap_or(0),
                        r.packages.unwrap_or(0)
                    ),
                ),
                UpdateStatus::Updated => note(
                    ctx,
                    &format!(
                        "{}: updated to index version {}{} ({} package versions, expires {exp})",
                        r.repo,
                        r.version.unwrap_or(0),
                        r.from_version
                            .map(|v| format!(" from {v}"))
                            .unwrap_or_default(),
                        r.packages.unwrap_or(0)
                    ),
                ),
                UpdateStatus::Failed => eprintln!(
                    "error: {}: {}",
                    r.repo,
                    r.error.as_deref().unwrap_or("failed")
                ),
            }
            if let Some(k) = &r.key_rotated_to {
                note(ctx, &format!("{}: signing key rotated to {k}", r.repo));
            }
            for s in &r.refused {
                eprintln!(
                    "error: {}: refused package `{}`: repository `{}` already provides it (pin it with `qpm repo pin {} {}` if intended)",
                    r.repo, s.package, s.owner, s.package, r.repo
                );
            }
        }
    }
    Ok(if failed {
        Status::Failure
    } else {
        Status::Success
    })
}

fn search(a: &SearchArgs, ctx: &Ctx) -> Result<Status> {
    let c = client()?;
    let hits = c.search(a.query.as_deref().unwrap_or(""))?;
    if ctx.json {
        print_json(&serde_json::json!({ "version": 1, "packages": hits }))?;
    } else {
        let mut out = std::io::stdout().lock();
        for h in &hits {
            writeln!(
                out,
                "{:<24} {:<10} {:<12} {}",
                h.name, h.version, h.repo, h.summary
            )?;
        }
    }
    Ok(if hits.is_empty() {
        Status::Failure
    } else {
        Status::Success
    })
}

fn info(a: &InfoArgs, ctx: &Ctx) -> Result<Status> {
    let spec: PackageSpec = a.package.parse()?;
    let c = client()?;
    let mut all = c.info(&spec.name)?;
    if let Some(req) = &spec.version {
        all.retain(|e| req.matches(&e.entry.version));
        if all.is_empty() {
            bail!("no version of `{}` matches `{req}`", spec.name);
        }
    }
    if ctx.json {
        print_json(&serde_json::json!({ "version": 1, "name": spec.name, "versions": all }))?;
        return Ok(Status::Success);
    }
    let best = all.iter().find(|e| e.provides).unwrap_or(&all[0]);
    let e = &best.entry;
    let mut out = std::io::stdout().lock();
    writeln!(out, "name:        {}", e.name)?;
    writeln!(out, "version:     {}", e.version)?;
    writeln!(out, "summary:     {}", e.summary)?;
    writeln!(out, "repository:  {}", best.repo)?;
    if !e.requires.is_empty() {
        writeln!(out, "requires:    {}", e.requires.join(", "))?;
    }
    writeln!(out, "archive:     {} ({} bytes)", e.archive, e.size)?;
    writeln!(out, "sha256:      {}", e.sha256)?;
    if let Some(d) = &e.description {
        writeln!(out, "description:")?;
        for l in d.lines() {
            writeln!(out, "  {l}")?;
        }
    }
    writeln!(out, "versions:")?;
    for v in &all {
        writeln!(
            out,
            "  {:<10} {}{}",
            v.entry.version,
            v.repo,
            if v.provides {
                ""
            } else {
                "  (refused: another repository provides this name)"
            }
        )?;
    }
    Ok(Status::Success)
}

fn download(a: &DownloadArgs, ctx: &Ctx) -> Result<Status> {
    let spec: PackageSpec = a.package.parse()?;
    let c = client()?;
    let r = c.resolve(&spec)?;
    let mut bar = Bar::new(ctx, format!("{} {}", r.entry.name, r.entry.version));
    let pkg = c.fetch(&r, &mut |d, t| bar.update(d, t));
    bar.finish();
    let pkg = pkg?;
    let (cached, _) = c.download(&r, &mut |_, _| {})?;
    std::fs::create_dir_all(&a.out_dir)?;
    let dest = a
        .out_dir
        .join(publish::archive_name(&r.entry.name, &r.entry.version));
    std::fs::copy(&cached, &dest).with_context(|| format!("writing `{}`", dest.display()))?;
    if ctx.json {
        print_json(&serde_json::json!({
            "version": 1,
            "name": pkg.manifest.name,
            "package_version": pkg.manifest.version.to_string(),
            "repo": r.repo,
            "path": dest,
            "sha256": r.entry.sha256,
            "size": r.entry.size,
        }))?;
    } else {
        println!("{}", dest.display());
        note(
            ctx,
            &format!(
                "{} {} from `{}`: {} bytes, sha256 {} (verified)",
                r.entry.name, r.entry.version, r.repo, r.entry.size, r.entry.sha256
            ),
        );
    }
    Ok(Status::Success)
}
