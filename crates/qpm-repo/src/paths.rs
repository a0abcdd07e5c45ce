//! Where the client keeps its configuration, state and cache.
//!
//! In the management qube, under the XDG base directories:
//! `$XDG_CONFIG_HOME/qpm/repos.toml` (`~/.config`), the verified indexes
//! and rollback/rotation state under `$XDG_STATE_HOME/qpm/repos/`
//! (`~/.local/state`), downloaded archives under `$XDG_CACHE_HOME/qpm/`
//! (`~/.cache`). `QPM_HOME=DIR` puts all three under `DIR/config`,
//! `DIR/state` and `DIR/cache` (tests, or several independent setups).

use std::path::PathBuf;

use crate::Error;

/// The three directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Configuration (`repos.toml`).
    pub config: PathBuf,
    /// State: verified indexes, last versions seen, trusted keys after rotation.
    pub state: PathBuf,
    /// Cache: downloaded archives (verified again before use).
    pub cache: PathBuf,
}

impl Paths {
    /// All three under one directory.
    pub fn under(home: impl Into<PathBuf>) -> Self {
        let home = home.into();
        Self {
            config: home.join("config"),
            state: home.join("state"),
            cache: home.join("cache"),
        }
    }

    /// From `QPM_HOME`, else the XDG variables, else `$HOME`.
    pub fn from_env() -> Result<Self, Error> {
        if let Some(h) = std::env::var_os("QPM_HOME").filter(|h| !h.is_empty()) {
            return Ok(Self::under(h));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        let xdg = |var: &str, rel: &str| -> Result<PathBuf, Error> {
            match std::env::var_os(var).map(PathBuf::from) {
                Some(p) if p.is_absolute() => Ok(p.join("qpm")),
                _ => home
                    .as_ref()
                    .map(|h| h.join(rel).join("qpm"))
                    .ok_or_else(|| Error::Usage("neither QPM_HOME nor HOME is set".into())),
            }
        };
        Ok(Self {
            config: xdg("XDG_CONFIG_HOME", ".config")?,
            state: xdg("XDG_STATE_HOME", ".local/state")?,
            cache: xdg("XDG_CACHE_HOME", ".cache")?,
        })
    }
}
