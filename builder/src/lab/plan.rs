//! The cluster file turned into the lab's VMs, and every refusal that must
//! come before any VM: a board with no VM, a missing tool or firmware, no root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::bail;
use piha_config::cluster::{ClusterFile, Role};

use super::net::mac_for;
use super::vm::Machine;

/// The board every node runs as with `--as-amd64`.
pub const AMD64_BOARD: &str = "amd64";

/// One node as a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNode {
    pub name: String,
    pub role: Role,
    pub ip: Ipv4Addr,
    /// The board whose image it boots (amd64 for every node with `--as-amd64`).
    pub board: String,
    pub machine: Machine,
    pub mac: String,
    pub tap: String,
}

/// The VM a board's image boots in, if the lab has one.
pub fn machine_for(board: &str) -> Option<Machine> {
    match board {
        "amd64" => Some(Machine::Amd64Uefi),
        "arm64-uefi" => Some(Machine::Arm64Uefi),
        _ => None,
    }
}

/// Every node of `cluster` as a VM, or only those named in `only` (empty:
/// all); with `as_amd64`, every node boots the amd64 image whatever its board.
/// Refuses a board with no VM, naming each node and the way out, and a choice
/// of nodes that could never come up (an unknown name, no init control plane,
/// no director when the cluster has directors).
pub fn plan(cluster: &ClusterFile, cluster_path: &Path, as_amd64: bool, only: &[String]) -> anyhow::Result<Vec<PlannedNode>> {
    check_only(cluster, cluster_path, only)?;
    let mut unmapped = Vec::new();
    let mut nodes = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        if !only.is_empty() && !only.contains(&n.name) {
            continue;
        }
        let board = if as_amd64 { AMD64_BOARD } else { n.board.as_str() };
        let Some(machine) = machine_for(board) else {
            unmapped.push(format!("{} (board {})", n.name, n.board));
            continue;
        };
        nodes.push(PlannedNode {
            name: n.name.clone(),
            role: n.role,
            ip: n.ip,
            board: board.to_string(),
            machine,
            // A node matched by MAC gets that MAC, so its card's network file matches.
            mac: n.mac.clone().unwrap_or_else(|| mac_for(n.ip)),
            tap: format!("tap{i}"),
        });
    }
    if !unmapped.is_empty() {
        bail!(
            "{}: the lab has no VM for {}: it boots amd64 (QEMU q35 + OVMF) and arm64-uefi (QEMU virt + AAVMF) images. Rehearse the cluster on amd64 VMs with `piha lab up --as-amd64`",
            cluster_path.display(),
            unmapped.join(", ")
        );
    }
    Ok(nodes)
}

/// `--nodes`: every name a node of the cluster, the init control plane among
/// them (nothing else runs `kubeadm init`), and a director when the cluster
/// has any (without one the VIP never answers and every join waits forever).
fn check_only(cluster: &ClusterFile, cluster_path: &Path, only: &[String]) -> anyhow::Result<()> {
    if only.is_empty() {
        return Ok(());
    }
    let all: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    let unknown: Vec<&str> = only.iter().map(String::as_str).filter(|o| !all.contains(o)).collect();
    if !unknown.is_empty() {
        bail!(
            "--nodes names {}, not a node of {} (its nodes: {})",
            unknown.join(", "),
            cluster_path.display(),
            all.join(", ")
        );
    }
    if let Some(init) = cluster.init_node().filter(|n| !only.contains(&n.name)) {
        bail!(
            "--nodes leaves out {}, the init control plane of {}: without it nothing runs `kubeadm init` and every other node waits forever; add it",
            init.name,
            cluster_path.display()
        );
    }
    let directors: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| n.role == Role::Director)
        .map(|n| n.name.as_str())
        .collect();
    if !directors.is_empty() && !directors.iter().any(|d| only.iter().any(|o| o == d)) {
        bail!(
            "--nodes leaves out every director of {} ({}): without one the API VIP never answers and every join waits forever; add one",
            cluster_path.display(),
            directors.join(", ")
        );
    }
    Ok(())
}

/// The cluster as the lab stamps it: the lab's SSH key added and, with
/// `--as-amd64`, every node on the amd64 board with its NIC found by MAC or by
/// the default match (a Pi's `eth0` is not a VM's name).
pub fn lab_cluster(cluster: &ClusterFile, lab_key: &str, as_amd64: bool) -> ClusterFile {
    let mut c = cluster.clone();
    c.ssh_authorized_keys.push(lab_key.to_string());
    if as_amd64 {
        for n in &mut c.nodes {
            if n.board != AMD64_BOARD {
                n.board = AMD64_BOARD.to_string();
                n.interface = None;
            }
        }
    }
    c
}

/// The host tools and firmware the lab's VMs need, missing ones named.
pub fn missing_tools(nodes: &[PlannedNode]) -> Vec<String> {
    let mut needed: BTreeSet<String> = ["ip", "ssh", "ssh-keygen", "curl", "openssl"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut files = BTreeSet::new();
    for n in nodes {
        needed.insert(n.machine.program().to_string());
        let (code, vars) = n.machine.firmware();
        files.insert(code);
        files.insert(vars);
    }
    let mut missing: Vec<String> = needed.into_iter().filter(|t| !on_path(t)).collect();
    missing.extend(files.into_iter().filter(|f| !Path::new(f).exists()).map(str::to_string));
    missing
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(Into::into))
        .any(|d| d.join(tool).is_file())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use piha_config::cluster::ClusterFile;

    use super::{lab_cluster, plan};
    use crate::lab::vm::Machine;

    fn cluster(boards: &[&str]) -> ClusterFile {
        let mut text = String::from(
            "name: t\ndistro: debian-bookworm\nkubernetes:\n  version: \"1.34.1\"\n  runtime: containerd\napi:\n  vip: 10.0.2.100\nnetwork:\n  prefix: 24\n  gateway: 10.0.2.2\nnodes:\n",
        );
        for (i, b) in boards.iter().enumerate() {
            let role = if i == 0 { "director" } else { "control-plane" };
            text.push_str(&format!(
                "  - {{name: n{i}, board: {b}, role: {role}, ip: 10.0.2.{}, interface: eth0}}\n",
                10 + i
            ));
        }
        ClusterFile::parse(Path::new("c.yaml"), &text).expect("parses")
    }

    #[test]
    fn amd64_and_arm64_uefi_have_vms() {
        let p = plan(&cluster(&["amd64", "arm64-uefi"]), Path::new("c.yaml"), false, &[]).unwrap();
        assert_eq!(p[0].machine, Machine::Amd64Uefi);
        assert_eq!(p[1].machine, Machine::Arm64Uefi);
        assert_eq!((p[0].tap.as_str(), p[1].tap.as_str()), ("tap0", "tap1"));
    }

    #[test]
    fn a_pi_is_refused_naming_the_node_and_the_amd64_rehearsal() {
        let err = plan(&cluster(&["amd64", "rpi4", "rpi5"]), Path::new("c.yaml"), false, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.yaml: the lab has no VM for n1 (board rpi4), n2 (board rpi5)"),
            "{err}"
        );
        assert!(err.contains("--as-amd64"), "{err}");
        let p = plan(&cluster(&["amd64", "rpi4"]), Path::new("c.yaml"), true, &[]).unwrap();
        assert!(p.iter().all(|n| n.machine == Machine::Amd64Uefi && n.board == "amd64"));
    }

    #[test]
    fn nodes_picks_a_subset_that_can_come_up() {
        let c = cluster(&["amd64", "amd64", "amd64"]);
        let only = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = plan(&c, Path::new("c.yaml"), false, &only(&["n0", "n1"])).unwrap();
        let names: Vec<&str> = p.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n0", "n1"]);
        assert_eq!(p[1].tap, "tap1", "a node keeps its tap whatever is left out");
        let err = plan(&c, Path::new("c.yaml"), false, &only(&["n0", "n1", "n7"]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--nodes names n7, not a node of c.yaml (its nodes: n0, n1, n2)");
        let err = plan(&c, Path::new("c.yaml"), false, &only(&["n0", "n2"])).unwrap_err().to_string();
        assert!(err.starts_with("--nodes leaves out n1, the init control plane of c.yaml"), "{err}");
        let err = plan(&c, Path::new("c.yaml"), false, &only(&["n1", "n2"])).unwrap_err().to_string();
        assert!(err.starts_with("--nodes leaves out every director of c.yaml (n0)"), "{err}");
    }

    #[test]
    fn the_lab_cluster_adds_the_lab_key_and_moves_pis_to_amd64() {
        let c = lab_cluster(&cluster(&["amd64", "rpi4"]), "ssh-ed25519 AAAA lab", true);
        assert_eq!(c.ssh_authorized_keys.last().map(String::as_str), Some("ssh-ed25519 AAAA lab"));
        assert_eq!(c.nodes[1].board, "amd64");
        assert_eq!(c.nodes[1].interface, None);
        assert_eq!(c.nodes[0].interface.as_deref(), Some("eth0"), "an amd64 node keeps its NIC name");
    }
}
