//! What stage 2 does for a plan: the agent placed, the identity every node
//! makes for itself left out (machine ID, SSH host keys), the admin user's
//! SSH keys, `image.json`, the overlays and templates, and the boot rules.

use super::templates::{context, render_cmdline};
use super::{Customization, NewEntry};
use crate::pipeline::plan::Plan;
use crate::pipeline::rootfs::{ADMIN_UID, ADMIN_USER};

/// What no image may carry: host-specific identity made while building.
pub const REMOVE: &[&str] = &[
    // Each node makes its own host keys on first boot (overlays/base: piha-ssh-hostkeys.service).
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
];

/// Everything stage 2 does for this plan.
pub fn customization(plan: &Plan, agent: &[u8], info_json: &str, epoch: u64) -> anyhow::Result<Customization> {
    let cmdline = render_cmdline(plan)?;
    Ok(Customization {
        overlays: plan.overlays.clone(),
        templates: Some(plan.templates.clone()).filter(|t| t.is_dir()),
        context: context(plan, &cmdline),
        entries: entries(plan, agent, info_json),
        remove: remove(plan),
        boot_files: plan
            .req
            .board
            .boot
            .files
            .iter()
            .filter(|f| f.applies_to(plan.req.distro.family))
            .cloned()
            .collect(),
        epoch,
    })
}

/// The files the build adds itself.
fn entries(plan: &Plan, agent: &[u8], info_json: &str) -> Vec<NewEntry> {
    let keys: String = plan
        .req
        .cluster
        .ssh_authorized_keys
        .iter()
        .map(|k| format!("{}\n", k.trim()))
        .collect();
    let home = format!("home/{ADMIN_USER}");
    vec![
        NewEntry::file("usr/bin/piha-agent", agent.to_vec(), 0o755),
        // "uninitialized" is systemd's first-boot marker: each node generates
        // its own machine ID and commits it once its first boot is done.
        NewEntry::file("etc/machine-id", "uninitialized\n", 0o444),
        NewEntry::file("etc/hostname", "piha\n", 0o644),
        NewEntry::file("etc/piha/image.json", info_json.as_bytes().to_vec(), 0o644),
        NewEntry::dir(&format!("{home}/.ssh"), 0o700).owned_by(ADMIN_UID, ADMIN_UID),
        NewEntry::file(&format!("{home}/.ssh/authorized_keys"), keys, 0o600).owned_by(ADMIN_UID, ADMIN_UID),
    ]
}

/// [`REMOVE`], and what a package put where the boot partition is mounted:
/// that is on the partition, not hidden under it.
fn remove(plan: &Plan) -> Vec<String> {
    REMOVE
        .iter()
        .map(|s| s.to_string())
        .chain([format!("{}/*", plan.req.board.partitions.boot.mount.trim_matches('/'))])
        .collect()
}
