#![forbid(unsafe_code)]
//! `qpm-dom0`: the only part of qpm that runs in dom0. It bootstraps the
//! management qube (`init`, `uninstall`, `adopt`, `sync-grant`,
//! `sync-revoke`, `verify`) and serves the package policy gatekeeper
//! (`qpm.PolicySubmit`, `qpm.PolicyGet`, `qpm.PolicyRemove`). It runs no
//! package code and keeps no process running. See docs/gatekeeper.md for
//! how to review it.

mod qubesd;
mod texts;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qpm_gatekeeper::{Config, Store, write_atomic};
use qpm_policy::Policy;

use crate::qubesd::Qubesd;

/// Largest policy read from a caller: a larger one is rejected unread.
const MAX_INPUT: u64 = 1 << 20;

/// dom0 bootstrap and package policy gatekeeper for qpm.
///
/// Every change is printed before it is made; --dry-run prints and stops.
#[derive(Parser)]
#[command(name = "qpm-dom0", version, max_term_width = 100)]
struct Cli {
    /// Print the changes without making them.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Act on the simulated dom0 in DIR instead of this dom0 (also read from
    /// QPM_SIM, which the simulator sets for its dom0 services).
    #[arg(long, global = true, env = "QPM_SIM", value_name = "DIR")]
    sim: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or adopt) the management qube and let it use exactly the
    /// Admin API subset qpm needs: create qubes, read and change the qubes
    /// it created, read templates, submit package policies.
    Init {
        /// The management qube.
        #[arg(long)]
        mgmt: String,
        /// The offline config qube that pushes configuration (default: mgmt).
        #[arg(long)]
        config_qube: Option<String>,
        /// Use an existing qube as the management qube.
        #[arg(long)]
        adopt: bool,
        /// Template of a new management qube (default: the default template).
        #[arg(long)]
        template: Option<String>,
    },
    /// Remove everything init, sync-grant and the gatekeeper wrote
    /// (package policies included). Qubes are kept.
    Uninstall,
    /// Bring a qube created elsewhere under the management qube, in package
    /// P (only dom0 may set `created-by-` tags).
    Adopt {
        qube: String,
        #[arg(long)]
        package: String,
    },
    /// Let the config qube sync into these qubes (`qpm.SyncConfig`) and set
    /// their `custom-persist.qpm-0` … `qpm-31` features.
    SyncGrant {
        #[arg(required = true)]
        qubes: Vec<String>,
        /// Ask the user in dom0 before each sync instead of allowing it.
        #[arg(long)]
        ask: bool,
        /// Run the receiving service as root (needed for files outside /home).
        #[arg(long)]
        root: bool,
    },
    /// Withdraw sync grants.
    SyncRevoke {
        #[arg(required = true)]
        qubes: Vec<String>,
    },
    /// Re-check every stored package policy against the qubes as they are.
    Verify,
    /// Run a gatekeeper service (what /etc/qubes-rpc/qpm.Policy* call).
    Service {
        /// submit, get or remove.
        op: String,
        /// The package (default: QREXEC_SERVICE_ARGUMENT).
        package: Option<String>,
    },
}

struct Paths {
    policy: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// The simulated dom0's service directory.
    rpc: Option<PathBuf>,
}

impl Paths {
    fn new(sim: Option<&Path>) -> Self {
        match sim {
            None => Self {
                policy: "/etc/qubes/policy.d".into(),
                socket: "/var/run/qubesd.sock".into(),
                config: "/etc/qpm/gatekeeper.json".into(),
                log: "/var/log/qubes/qpm-gatekeeper.log".into(),
                rpc: None,
            },
            Some(d) => Self {
                policy: d.join("policy.d"),
                socket: d.join("run/qubesd.sock"),
                config: d.join("dom0/etc/qpm/gatekeeper.json"),
                log: d.join("log/qpm-gatekeeper.log"),
                rpc: Some(d.join("dom0/rpc")),
            },
        }
    }

    fn config(&self) -> Result<Config, String> {
        let text = std::fs::read_to_string(&self.config)
            .map_err(|e| format!("{}: {e} (run `qpm-dom0 init` first)", self.config.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", self.config.display()))
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // Installed as /etc/qubes-rpc/qpm.PolicySubmit etc.: argv[0] says which.
    let mut args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("")
        .to_owned();
    if let Some(op) = name.strip_prefix("qpm.Policy") {
        args.splice(
            0..1,
            ["qpm-dom0".to_owned(), "service".into(), op.to_lowercase()],
        );
    }
    let cli = Cli::parse_from(args);
    let paths = Paths::new(cli.sim.as_deref());
    let run = Run {
        paths,
        dry_run: cli.dry_run,
    };
    let result = match cli.cmd {
        Cmd::Init {
            mgmt,
            config_qube,
            adopt,
            template,
        } => run.init(&mgmt, config_qube, adopt, template),
        Cmd::Uninstall => run.uninstall(),
        Cmd::Adopt { qube, package } => run.adopt(&qube, &package),
        Cmd::SyncGrant { qubes, ask, root } => run.sync(&qubes, Some((ask, root))),
        Cmd::SyncRevoke { qubes } => run.sync(&qubes, None),
        Cmd::Verify => run.verify(),
        Cmd::Service { op, package } => return run.service(&op, package),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qpm-dom0: error: {e}");
            ExitCode::from(2)
        }
    }
}

struct Run {
    paths: Paths,
    dry_run: bool,
}

impl Run {
    fn qubesd(&self) -> Qubesd {
        Qubesd::new(&self.paths.socket)
    }

    /// Prints a change; true when it should be made.
    fn change(&self, what: &str) -> bool {
        println!("{}{what}", if self.dry_run { "would " } else { "" });
        !self.dry_run
    }

    /// Writes one policy file after checking the directory still loads.
    fn write_policy(&self, name: &str, text: &str) -> Res<()> {
        let rules = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        let path = self.paths.policy.join(name);
        if self.change(&format!("write {} ({rules} rules)", path.display())) {
            Policy::validate_change(&self.paths.policy, name, Some(text.as_bytes()))
                .map_err(|e| format!("the policy would not load: {e}"))?;
            write_atomic(&path, text.as_bytes())?;
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Res<()> {
        if path.exists() && self.change(&format!("remove {}", path.display())) {
            std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }

    fn init(
        &self,
        mgmt: &str,
        cfg: Option<String>,
        adopt: bool,
        template: Option<String>,
    ) -> Res<ExitCode> {
        let qd = self.qubesd();
        let qubes = qd.list()?;
        let exists = |n: &str| qubes.iter().any(|(q, _)| q == n);
        if mgmt == "dom0" || cfg.as_deref() == Some("dom0") {
            return Err("dom0 cannot be the management or config qube".into());
        }
        if exists(mgmt) && !adopt {
            return Err(format!(
                "qube `{mgmt}` exists: pass --adopt to use it as the management qube"
            )
            .into());
        }
        if !exists(mgmt) {
            let tpl = match template {
                Some(t) => t,
                None => qd
                    .call("admin.property.Get", "dom0", "default_template", b"")?
                    .rsplit(' ')
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            };
            if self.change(&format!(
                "create qube {mgmt} (AppVM from {tpl}, label black, no network)"
            )) {
                let payload = format!("name={mgmt} label=black");
                qd.call("admin.vm.Create.AppVM", "dom0", &tpl, payload.as_bytes())?;
                qd.call("admin.vm.property.Set", mgmt, "netvm", b"")?;
            }
        } else {
            println!(
                "adopt existing qube {mgmt} as the management qube (its network is left as it is)"
            );
        }
        if let Some(c) = &cfg
            && !exists(c)
            && c != mgmt
        {
            return Err(format!("config qube `{c}` does not exist: create it first").into());
        }
        self.write_policy(texts::BASE_FILE, &texts::base_policy(mgmt))?;
        let mut config = self.paths.config().unwrap_or(Config {
            mgmt: mgmt.into(),
            extra_targets: vec![],
            config_qube: None,
        });
        config.mgmt = mgmt.into();
        config.config_qube = cfg.filter(|c| c != mgmt);
        let json = serde_json::to_string_pretty(&config)? + "\n";
        if self.change(&format!("write {}", self.paths.config.display())) {
            if let Some(dir) = self.paths.config.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            write_atomic(&self.paths.config, json.as_bytes())?;
        }
        if let Some(rpc) = &self.paths.rpc {
            // The simulated dom0: install the services (an RPM does it on Qubes)
            // and retire the simulator's bootstrap policy, which this supersedes.
            self.remove_file(&self.paths.policy.join("30-qpm-sim-base.policy"))?;
            let me = std::env::current_exe()?;
            for s in texts::SERVICES {
                if self.change(&format!("install service {}", rpc.join(s).display())) {
                    std::fs::create_dir_all(rpc)?;
                    std::fs::copy(&me, rpc.join(s))
                        .map_err(|e| format!("{}: {e}", rpc.join(s).display()))?;
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn uninstall(&self) -> Res<ExitCode> {
        let entries = std::fs::read_dir(&self.paths.policy)
            .map_err(|e| format!("{}: {e}", self.paths.policy.display()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.starts_with(qpm_gatekeeper::FILE_PREFIX)
                    || n == texts::BASE_FILE
                    || n == texts::SYNC_FILE
            })
            .collect();
        files.sort();
        files.push(self.paths.config.clone());
        if let Some(rpc) = &self.paths.rpc {
            files.extend(texts::SERVICES.iter().map(|s| rpc.join(s)));
        }
        for f in files {
            self.remove_file(&f)?;
        }
        println!(
            "the management qube and the qubes it created are kept; remove them with qvm-remove"
        );
        Ok(ExitCode::SUCCESS)
    }

    fn adopt(&self, qube: &str, package: &str) -> Res<ExitCode> {
        let config = self.paths.config()?;
        if !qpm_gatekeeper::valid_package(package) {
            return Err(format!("invalid package name {package:?}").into());
        }
        let qd = self.qubesd();
        let class = qd
            .list()?
            .into_iter()
            .find(|(n, _)| n == qube)
            .map(|(_, c)| c);
        match class.as_deref() {
            None => return Err(format!("no qube `{qube}`").into()),
            Some("AdminVM") => return Err("dom0 cannot be adopted".into()),
            Some(_) => {}
        }
        let tags = qd.tags(qube)?;
        let pkg_tag = format!("qpm-pkg-{package}");
        if let Some(t) = tags
            .iter()
            .find(|t| t.starts_with("qpm-pkg-") && **t != pkg_tag)
        {
            return Err(format!("`{qube}` already belongs to package `{}`", &t[8..]).into());
        }
        for tag in [format!("created-by-{}", config.mgmt), pkg_tag] {
            if !tags.contains(&tag) && self.change(&format!("tag {qube} with {tag}")) {
                qd.call("admin.vm.tag.Set", qube, &tag, b"")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn sync(&self, qubes: &[String], grant: Option<(bool, bool)>) -> Res<ExitCode> {
        let config = self.paths.config()?;
        let cfg = config.config_qube.clone().unwrap_or(config.mgmt);
        let path = self.paths.policy.join(texts::SYNC_FILE);
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let mut blocks = texts::blocks(&old);
        let known = self.qubesd().list()?;
        for q in qubes {
            if q == "dom0" || known.iter().any(|(n, c)| n == q && c == "AdminVM") {
                return Err("dom0 is never a sync target".into());
            }
            if grant.is_some() && !known.iter().any(|(n, _)| n == q) {
                return Err(format!("no qube `{q}`").into());
            }
            blocks.retain(|(n, _)| n != q);
            if let Some((ask, root)) = grant {
                blocks.push((q.clone(), texts::grant(&cfg, q, ask, root)));
            }
        }
        if blocks.is_empty() {
            self.remove_file(&path)?;
        } else {
            self.write_policy(texts::SYNC_FILE, &texts::sync_file(&cfg, &blocks))?;
        }
        Ok(ExitCode::SUCCESS)
    }

    fn verify(&self) -> Res<ExitCode> {
        let config = self.paths.config()?;
        let system = self.qubesd().system()?;
        let mut bad = 0;
        for (pkg, v) in Store::new(&self.paths.policy).verify(&system, &config)? {
            if v.accepted {
                println!("{pkg}: ok");
            }
            for x in &v.violations {
                bad += 1;
                let line = x.line.map(|l| format!(":{l}")).unwrap_or_default();
                println!("{pkg}{line}: {} ({})", x.message, x.rule);
            }
        }
        Ok(if bad == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }

    /// A gatekeeper service. The caller gets a short answer on stdout (JSON
    /// for submit and remove, the text for get), exit 0 or 1; details of
    /// failures go to stderr and the log.
    fn service(&self, op: &str, package: Option<String>) -> ExitCode {
        let package = package
            .or_else(|| std::env::var("QREXEC_SERVICE_ARGUMENT").ok())
            .unwrap_or_default();
        let caller = std::env::var("QREXEC_REMOTE_DOMAIN").unwrap_or_else(|_| "dom0".into());
        let outcome = self.serve(op, &package, &caller);
        let (code, summary) = match &outcome {
            Ok((code, summary)) => (*code, summary.clone()),
            Err(e) => {
                eprintln!("{e}");
                (1, e.to_string())
            }
        };
        self.log(&format!("{caller} {op} {package:?}: {summary}"));
        ExitCode::from(code)
    }

    fn serve(&self, op: &str, package: &str, caller: &str) -> Res<(u8, String)> {
        let op = op
            .strip_prefix("qpm.Policy")
            .map_or(op.to_owned(), str::to_lowercase);
        let config = self.paths.config()?;
        if caller != config.mgmt && caller != "dom0" {
            return Err(format!("PermissionDenied `{caller}` is not the management qube").into());
        }
        let store = Store::new(&self.paths.policy);
        let mut out = std::io::stdout().lock();
        match op.as_str() {
            "get" => {
                let text = store.get(package)?;
                out.write_all(&text)?;
                Ok((0, format!("{} bytes", text.len())))
            }
            "submit" => {
                let mut policy = Vec::new();
                std::io::stdin().take(MAX_INPUT).read_to_end(&mut policy)?;
                let system = self.qubesd().system()?;
                let (verdict, recheck) = if qpm_gatekeeper::valid_package(package) {
                    store.submit(package, &policy, &system, &config)?
                } else {
                    return Err(format!("invalid package name {package:?}").into());
                };
                let installed = verdict
                    .accepted
                    .then(|| String::from_utf8_lossy(&policy).into_owned());
                let json = serde_json::json!({
                    "accepted": verdict.accepted, "violations": verdict.violations,
                    "warnings": verdict.warnings, "installed": installed, "disabled": recheck.disabled,
                });
                writeln!(out, "{json}")?;
                let n = verdict.violations.len();
                Ok(if verdict.accepted {
                    (0, "accepted".into())
                } else {
                    (1, format!("rejected, {n} violations"))
                })
            }
            "remove" => {
                let system = self.qubesd().system()?;
                let recheck = store.remove(package, &system, &config)?;
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "removed": package, "disabled": recheck.disabled })
                )?;
                Ok((0, "removed".into()))
            }
            _ => Err(format!("unknown service operation {op:?}: use submit, get or remove").into()),
        }
    }

    fn log(&self, line: &str) {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Some(dir) = self.paths.log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.paths.log);
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{secs} {}", line.escape_debug());
        }
    }
}
