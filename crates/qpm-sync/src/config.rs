//! The receiver's configuration (a TOML file in the target qube).
//!
//! ```toml
//! # who may push (QREXEC_REMOTE_DOMAIN); empty = whoever dom0 lets through
//! sources = ["cfg"]
//! home = "/home/user"
//! # what may be written: `~/` prefixes are in home, `/` prefixes are system
//! # paths (system paths also need the service to run as root)
//! allow = ["~/"]
//! deny = ["~/.ssh/authorized_keys"]
//! # applied without asking when every change of a sync is listed here
//! auto_apply = ["~/.config/app/"]
//! gui = "auto"          # auto (when DISPLAY is set) | never
//! dialog = "zenity"
//! max_file_size = 16777216
//! max_total_size = 268435456
//! max_files = 10000
//! ```
//!
//! Safe defaults: every home path may be pushed but nothing is applied
//! without consent, no system path is allowed, and the agent's own state,
//! configuration and binary, qrexec service and policy directories and
//! `/rw/config` can never be written whatever the file says.

use std::path::Path;

use crate::proto;

/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// When to show the consent dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gui {
    /// When `DISPLAY` is set.
    Auto,
    /// Never: queue for `qpm-agent review`.
    Never,
}

/// Receiver configuration.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Allowed callers; empty allows any caller dom0 lets through.
    pub sources: Vec<String>,
    /// Home directory of the qube's user (absolute, below the root).
    pub home: String,
    /// Allowed path prefixes (`~/...` or `/...`; a trailing `/` means the
    /// whole subtree, otherwise the exact file).
    pub allow: Vec<String>,
    /// Denied paths (same syntax), checked before `allow`.
    pub deny: Vec<String>,
    /// Paths applied without asking (same syntax).
    pub auto_apply: Vec<String>,
    /// When to show a dialog.
    pub gui: Gui,
    /// Dialog program (zenity-compatible `--text-info`).
    pub dialog: String,
    /// Largest file accepted.
    pub max_file_size: u64,
    /// Largest total accepted.
    pub max_total_size: u64,
    /// Most files accepted.
    pub max_files: u32,
    /// The agent's bind-dirs file (absolute, below the root).
    pub bind_dirs_file: String,
    /// Directory holding persistent copies of bind-mounted paths.
    pub bind_dirs_rw: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            home: "/home/user".into(),
            allow: vec!["~/".into()],
            deny: Vec::new(),
            auto_apply: Vec::new(),
            gui: Gui::Auto,
            dialog: "zenity".into(),
            max_file_size: proto::MAX_FILE_SIZE,
            max_total_size: proto::MAX_TOTAL_SIZE,
            max_files: proto::MAX_FILES,
            bind_dirs_file: "/rw/config/qubes-bind-dirs.d/50_qpm.conf".into(),
            bind_dirs_rw: "/rw/bind-dirs".into(),
        }
    }
}

/// Paths no configuration can allow (absolute, below the root).
pub const ALWAYS_DENIED: &[&str] = &[
    "/etc/qubes-rpc/",
    "/usr/local/etc/qubes-rpc/",
    "/etc/qubes/",
    "/rw/config/",
    "/rw/bind-dirs/",
    "/usr/bin/qpm-agent",
    "/usr/local/bin/qpm-agent",
    "/etc/qpm-agent/",
];

/// Error loading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Unreadable.
    #[error("reading agent config `{path}`: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid TOML or a wrong field.
    #[error("agent config `{path}`: {message}")]
    Parse {
        /// File.
        path: String,
        /// Parser message (with line and column).
        message: String,
    },
}

/// [`AgentConfig::matches`] for a pattern without `~`.
fn matches_expanded(p: &str, abs: &str) -> bool {
    if p.ends_with('/') {
        abs.starts_with(p) || abs == p.trim_end_matches('/')
    } else {
        abs == p
    }
}

impl AgentConfig {
    /// Loads `path`, bounded to [`MAX_CONFIG_BYTES`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|e| ConfigError::Read {
            path: shown.clone(),
            source: e,
        })?;
        let mut s = String::new();
        f.take(MAX_CONFIG_BYTES)
            .read_to_string(&mut s)
            .map_err(|e| ConfigError::Read {
                path: shown.clone(),
                source: e,
            })?;
        let c: Self = toml::from_str(&s).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        if !c.home.starts_with('/') || c.home.contains("..") {
            return Err(ConfigError::Parse {
                path: shown,
                message: "`home` must be an absolute path without `..`".into(),
            });
        }
        Ok(c)
    }

    /// The home directory relative to the root (`home/user`).
    pub fn home_rel(&self) -> &str {
        self.home.trim_start_matches('/').trim_end_matches('/')
    }

    /// Expands `~/` in a pattern to the home directory (what
    /// [`Self::matches`] matches against).
    #[cfg(test)]
    fn expand(&self, p: &str) -> String {
        match p.strip_prefix("~/") {
            Some(rest) => format!("{}/{rest}", self.home.trim_end_matches('/')),
            None if p == "~" => format!("{}/", self.home.trim_end_matches('/')),
            None => p.to_owned(),
        }
    }

    /// Whether absolute path `abs` matches `pattern` (as if expanded with
    /// [`Self::expand`]; without building the expansion: this runs for
    /// every pattern and every file of a manifest).
    fn matches(&self, pattern: &str, abs: &str) -> bool {
        let tail = match pattern.strip_prefix("~/") {
            Some(t) => t,
            None if pattern == "~" => "",
            None => return matches_expanded(pattern, abs),
        };
        // The expansion is `home/tail` (home without trailing slashes).
        let Some(rest) = abs.strip_prefix(self.home.trim_end_matches('/')) else {
            return false;
        };
        if tail.is_empty() || tail.ends_with('/') {
            // A subtree: below it, or the directory itself.
            let t = tail.trim_end_matches('/');
            if t.is_empty() {
                rest.is_empty() || rest.strip_prefix('/').is_some_and(|r| r.starts_with(tail))
            } else {
                rest.strip_prefix('/')
                    .is_some_and(|r| r.starts_with(tail) || r == t)
            }
        } else {
            rest.strip_prefix('/') == Some(tail)
        }
    }

    /// Decides whether `abs` (absolute below the root) may be written, given
    /// extra denied prefixes (the agent's own files).
    pub fn allowed(&self, abs: &str, extra_deny: &[String]) -> bool {
        if ALWAYS_DENIED.iter().any(|d| self.matches(d, abs))
            || extra_deny.iter().any(|d| self.matches(d, abs))
        {
            return false;
        }
        if self.deny.iter().any(|d| self.matches(d, abs)) {
            return false;
        }
        self.allow.iter().any(|a| self.matches(a, abs))
    }

    /// Whether `abs` is listed for auto-apply.
    pub fn auto(&self, abs: &str) -> bool {
        self.auto_apply.iter().any(|a| self.matches(a, abs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        let c = AgentConfig::default();
        assert!(c.allowed("/home/user/.gitconfig", &[]));
        assert!(!c.allowed("/etc/passwd", &[]));
        assert!(!c.allowed("/home/userx/.gitconfig", &[]));
        assert!(!c.allowed("/etc/qubes-rpc/qpm.SyncConfig", &[]));
        assert!(!c.allowed(
            "/home/user/.local/state/qpm/x",
            &["/home/user/.local/state/qpm/".into()]
        ));
        assert!(!c.auto("/home/user/.gitconfig"));
    }

    #[test]
    fn patterns() {
        let c = AgentConfig {
            allow: vec!["~/".into(), "/etc/app/".into()],
            deny: vec!["~/.ssh/authorized_keys".into()],
            auto_apply: vec!["~/.config/app/".into()],
            ..AgentConfig::default()
        };
        assert!(c.allowed("/etc/app/app.conf", &[]));
        assert!(!c.allowed("/etc/apparmor.d/x", &[]));
        assert!(!c.allowed("/home/user/.ssh/authorized_keys", &[]));
        assert!(c.auto("/home/user/.config/app/x.conf"));
        assert!(!c.auto("/home/user/.config/other"));
    }

    /// The matcher agrees with matching against the expanded pattern.
    #[test]
    fn matching_without_expanding_agrees_with_expanding() {
        let patterns = [
            "~",
            "~/",
            "~/.ssh/",
            "~/.ssh",
            "~/a/b/",
            "~//",
            "/etc/",
            "/etc",
            "/",
            "/etc/app/x",
        ];
        let paths = [
            "/home/user",
            "/home/user/",
            "/home/userx",
            "/home/userx/a",
            "/home/user/.ssh",
            "/home/user/.ssh/",
            "/home/user/.ssh/id",
            "/home/user/.sshx",
            "/home/user/a/b",
            "/home/user/a/bc",
            "/home/user//x",
            "/etc",
            "/etc/",
            "/etcx",
            "/etc/app/x",
            "/",
            "",
        ];
        for home in ["/home/user", "/home/user/", "/"] {
            let c = AgentConfig {
                home: home.into(),
                ..AgentConfig::default()
            };
            for p in patterns {
                for a in paths {
                    let e = c.expand(p);
                    let want = if e.ends_with('/') {
                        a.starts_with(&e) || a == e.trim_end_matches('/')
                    } else {
                        a == e
                    };
                    assert_eq!(
                        c.matches(p, a),
                        want,
                        "home {home:?} pattern {p:?} path {a:?}"
                    );
                }
            }
        }
    }
}
