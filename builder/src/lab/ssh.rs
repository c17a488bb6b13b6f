//! The lab's way onto its nodes: its own ed25519 key (made by `ssh-keygen`
//! on the first `up`), added to the cluster's `ssh_authorized_keys` on every
//! lab card, and the system `ssh` run inside the namespace as the admin user
//! `piha`, which has passwordless sudo on piha images. The lab's key never
//! leaves the lab directory; the user's keys and `~/.ssh/config` play no part.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;
use piha_runner::{Cmd, Output, Runner};

use super::dir::LabDir;
use super::net;

/// The admin user of piha images (overlays/base/etc/sudoers.d/piha).
pub const USER: &str = "piha";

/// The lab's public key, made if it does not exist yet.
pub fn ensure_key(runner: &dyn Runner, dir: &LabDir) -> anyhow::Result<String> {
    let key = dir.ssh_key();
    let public = key.with_extension("pub");
    if !public.exists() {
        let parent = key.parent().unwrap_or(Path::new("."));
        piha_atomic::create_dirs(parent, piha_atomic::Perm::root(0o700)).with_context(|| format!("creating {}", parent.display()))?;
        let _ = std::fs::remove_file(&key);
        runner
            .run(
                &Cmd::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "piha-lab", "-f"])
                    .arg(&key),
            )
            .context("making the lab's SSH key")?;
    }
    let text = std::fs::read_to_string(&public).with_context(|| format!("reading {}", public.display()))?;
    Ok(text.trim().to_string())
}

/// `ssh` to `ip` inside the namespace, running `command` there.
pub fn command(dir: &LabDir, namespace: &str, ip: Ipv4Addr, command: &str) -> Cmd {
    let ssh = Cmd::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(dir.ssh_key())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            // Up to the end of the key exchange: an emulated VM sharing a
            // loaded host with five others took more than 5 s to get there.
            "-o",
            "ConnectTimeout=20",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
        ])
        .arg(format!("{USER}@{ip}"))
        .arg(command);
    net::exec(namespace, ssh)
}

/// Runs `command` on the node at `ip` and returns its output.
pub fn run(runner: &dyn Runner, dir: &LabDir, namespace: &str, ip: Ipv4Addr, cmd: &str) -> anyhow::Result<Output> {
    runner
        .run(&command(dir, namespace, ip, cmd))
        .with_context(|| format!("running `{cmd}` on {ip} over ssh"))
}
