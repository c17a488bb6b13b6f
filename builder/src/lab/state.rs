//! `lab.json`: what a lab is made of. `up` writes it before it creates the
//! namespace and rewrites it as each VM starts, so whatever a killed `piha`
//! left behind is named here; `down` and the next `up` clean by it. Written
//! atomically (piha-atomic): a crash never leaves half a file.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use piha_config::cluster::Role;
use serde::{Deserialize, Serialize};

use super::dir::LabDir;
use super::vm::Machine;

const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub schema: u32,
    /// The cluster file the lab was made from, and its secrets directory.
    pub cluster: PathBuf,
    pub secrets: PathBuf,
    pub cluster_name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    pub api_port: u16,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// `up` finished: every VM was started. A lab without it was cut off.
    pub complete: bool,
    /// How `up` made the disks, so `reflash` makes them the same way.
    #[serde(default)]
    pub as_amd64: bool,
    #[serde(default)]
    pub disk_grow_mib: u64,
    pub nodes: Vec<NodeState>,
}

/// One VM: who it is and the QEMU command line that powers it on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub role: Role,
    pub ip: Ipv4Addr,
    pub board: String,
    pub machine: Machine,
    pub tap: String,
    pub mac: String,
    /// `ip netns exec NS qemu-system-… …`, as run by `up` and `start`.
    pub argv: Vec<String>,
    /// The image its disk is a copy of (`reflash` copies it again).
    #[serde(default)]
    pub image: PathBuf,
}

impl LabState {
    pub fn new(cluster: &Path, secrets: &Path, cluster_name: &str, namespace: &str) -> LabState {
        LabState {
            schema: SCHEMA,
            cluster: cluster.to_path_buf(),
            secrets: secrets.to_path_buf(),
            cluster_name: cluster_name.to_string(),
            namespace: namespace.to_string(),
            vip: Ipv4Addr::UNSPECIFIED,
            api_port: 0,
            gateway: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            complete: false,
            as_amd64: false,
            disk_grow_mib: 0,
            nodes: Vec::new(),
        }
    }

    /// The lab's state, or `None` when the directory holds no lab.
    pub fn load(dir: &LabDir) -> anyhow::Result<Option<LabState>> {
        let path = dir.state();
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: LabState = serde_json::from_slice(&raw).with_context(|| {
            format!(
                "{} is not a lab state file this piha can read; remove the lab with `ip netns del` and the directory by hand",
                path.display()
            )
        })?;
        Ok(Some(state))
    }

    /// The lab's state; a directory without a lab is an error that says how
    /// to start one.
    pub fn existing(dir: &LabDir) -> anyhow::Result<LabState> {
        Self::load(dir)?.ok_or_else(|| {
            anyhow::anyhow!(
                "no lab in {}: start one with `piha lab up --cluster FILE --dir {}`",
                dir.root().display(),
                dir.root().display()
            )
        })
    }

    pub fn save(&self, dir: &LabDir) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self).context("serializing the lab state")?;
        text.push('\n');
        piha_atomic::write(&dir.state(), text.as_bytes(), None).with_context(|| format!("writing {}", dir.state().display()))
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&NodeState> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            anyhow::anyhow!(
                "the lab has no node `{name}`; its nodes are: {} (from {})",
                names.join(", "),
                self.cluster.display()
            )
        })
    }

    pub fn of_role(&self, role: Role) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(move |n| n.role == role)
    }
}
