//! Applying and removing the rules with the system's iptables
//! (`iptables-save`, `iptables-restore`, `iptables`; `ip6tables*` for
//! IPv6). Every change is one `iptables-restore --noflush` batch or one
//! deletion of our own chain or hook, never a flush of anything else.

use crate::rules::{self, Family, CHAINS, HOOKS};
use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot run {cmd}: {source} (is iptables installed, and are we root or CAP_NET_ADMIN?)"
    )]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
}

/// The iptables commands of one family.
pub struct Tables {
    /// `iptables` or `ip6tables` (or a path to it).
    pub bin: String,
}

/// What `apply` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The same rules were already there: nothing changed.
    Unchanged,
    /// Installed (after removing an older or partial set of ours).
    Installed,
}

impl Tables {
    pub fn new(family: Family, bin: Option<&str>) -> Tables {
        let default = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        Tables {
            bin: bin.unwrap_or(default).to_string(),
        }
    }

    fn run(&self, suffix: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        let program = format!("{}{suffix}", self.bin);
        let cmd = format!("{program} {}", args.join(" "));
        let mut child = Command::new(&program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|source| Error::Spawn {
                    cmd: cmd.clone(),
                    source,
                })?;
        }
        let out = child.wait_with_output().map_err(|source| Error::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(Error::Failed {
                cmd,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The nat table as `iptables-save` prints it.
    pub fn saved(&self) -> Result<String, Error> {
        self.run("-save", &["-t", "nat"], None)
    }

    /// Installs `batch` unless exactly it is installed already.
    pub fn apply(&self, batch: &str) -> Result<Applied, Error> {
        let saved = self.saved()?;
        if is_installed(&saved, batch) {
            return Ok(Applied::Unchanged);
        }
        self.remove(&saved)?;
        self.run("-restore", &["--noflush"], Some(batch))?;
        Ok(Applied::Installed)
    }

    /// Removes our hooks and chains; true if there were any.
    pub fn cleanup(&self) -> Result<bool, Error> {
        let saved = self.saved()?;
        let ours = !cleanup_commands(&saved).is_empty();
        self.remove(&saved)?;
        Ok(ours)
    }

    fn remove(&self, saved: &str) -> Result<(), Error> {
        for args in cleanup_commands(saved) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.run("", &args, None)?;
        }
        Ok(())
    }
}

/// Whether `saved` (an `iptables-save -t nat`) holds exactly `batch`: its
/// marker, as many rules in our chains, each hook once.
pub fn is_installed(saved: &str, batch: &str) -> bool {
    let Some(marker) = rules::marker_of(batch) else {
        return false;
    };
    let ours = |text: &str| {
        text.lines()
            .filter(|l| CHAINS.iter().any(|c| l.starts_with(&format!("-A {c} "))))
            .count()
    };
    let hooked = HOOKS.iter().all(|(hook, chain)| {
        saved
            .lines()
            .filter(|l| {
                l.starts_with(&format!("-A {hook} ")) && l.ends_with(&format!("-j {chain}"))
            })
            .count()
            == 1
    });
    saved.contains(marker) && ours(saved) == ours(batch) && hooked
}

/// The `iptables` argument lists that remove what `saved` shows of ours:
/// each hook rule jumping to our chains (as saved), then our chains
/// flushed, then deleted.
pub fn cleanup_commands(saved: &str) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for line in saved.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let mut words = rule.split_whitespace();
        let chain = words.next().unwrap_or("");
        if CHAINS.contains(&chain) {
            continue;
        }
        let spec: Vec<String> = words.map(str::to_string).collect();
        let jumps_to_ours = spec
            .windows(2)
            .any(|w| w[0] == "-j" && CHAINS.contains(&w[1].as_str()));
        if jumps_to_ours {
            let mut c = vec!["-t".into(), "nat".into(), "-D".into(), chain.to_string()];
            c.extend(spec);
            cmds.push(c);
        }
    }
    let present: Vec<&str> = CHAINS
        .iter()
        .copied()
        .filter(|c| saved.lines().any(|l| l.starts_with(&format!(":{c} "))))
        .collect();
    for flag in ["-F", "-X"] {
        for c in &present {
            cmds.push(vec!["-t".into(), "nat".into(), flag.into(), c.to_string()]);
        }
    }
    cmds
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-nft-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:OTHER - [0:0]\n:WEFT_INBOUND - [0:0]\n:WEFT_OUTPUT - [0:0]\n-A PREROUTING -p tcp -j WEFT_INBOUND\n-A PREROUTING -p udp -j OTHER\n-A OUTPUT -p tcp -j WEFT_OUTPUT\n-A WEFT_OUTPUT -m comment --comment \"weft-init 00\"\nCOMMIT\n";

    #[test]
    fn cleanup_removes_our_hooks_and_chains_and_nothing_else() {
        let cmds: Vec<String> = cleanup_commands(SAVED)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            cmds,
            vec![
                "-t nat -D PREROUTING -p tcp -j WEFT_INBOUND",
                "-t nat -D OUTPUT -p tcp -j WEFT_OUTPUT",
                "-t nat -F WEFT_INBOUND",
                "-t nat -F WEFT_OUTPUT",
                "-t nat -X WEFT_INBOUND",
                "-t nat -X WEFT_OUTPUT",
            ]
        );
        assert!(cleanup_commands("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").is_empty());
    }

    #[test]
    fn a_batch_is_installed_only_with_its_marker_its_rules_and_each_hook_once() {
        let batch = "*nat\n-A WEFT_OUTPUT -m comment --comment \"weft-init 00\"\n-A PREROUTING -p tcp -j WEFT_INBOUND\n-A OUTPUT -p tcp -j WEFT_OUTPUT\nCOMMIT\n";
        assert!(is_installed(SAVED, batch));
        assert!(!is_installed(
            &SAVED.replace("weft-init 00", "weft-init 01"),
            batch
        ));
        let twice = SAVED.replace(
            "-A OUTPUT -p tcp -j WEFT_OUTPUT\n",
            "-A OUTPUT -p tcp -j WEFT_OUTPUT\n-A OUTPUT -p tcp -j WEFT_OUTPUT\n",
        );
        assert!(!is_installed(&twice, batch));
    }
}
