//! Each node's VM state and agent phase, live, as the rows every status
//! command prints (`day2::node_status`).
//!
//! Two ways to read a node's status.json:
//! - from the VM's disk ([`rows`]), without mounting, as `piha status TARGET`
//!   reads a card (the guest mounts PIHA-CFG with `flush`, so what the agent
//!   reports reaches the disk at once): `up` polls this way, since it works
//!   before sshd runs. A read that races a write of the guest is retried
//!   once, then shown as unknown.
//! - over SSH with the lab's key inside the namespace ([`over_ssh`]), as
//!   `piha status --cluster` reads a real cluster (`day2::remote`): `piha
//!   lab status` reads running VMs this way, and their disks when SSH fails.

use std::net::Ipv4Addr;
use std::time::Duration;

use piha_config::status::Status;
use piha_runner::{Cmd, Runner};

use super::dir::LabDir;
use super::state::{LabState, NodeState};
use super::{ssh, vm};
use crate::card::report;
use crate::day2::node_status::{NodeStatus, Who};
use crate::day2::remote::{self, Transport};

pub use crate::day2::node_status::table;

fn who(n: &NodeState) -> Who {
    Who {
        name: n.name.clone(),
        role: n.role.as_str().to_string(),
        ip: n.ip.to_string(),
    }
}

fn vm_state(dir: &LabDir, n: &NodeState) -> &'static str {
    if vm::running(dir, &n.name) { "running" } else { "stopped" }
}

/// Every node, read from its VM's disk.
pub fn rows(dir: &LabDir, state: &LabState) -> Vec<NodeStatus> {
    state.nodes.iter().map(|n| row(dir, n)).collect()
}

/// One node, read from its VM's disk.
pub fn row(dir: &LabDir, n: &NodeState) -> NodeStatus {
    let mut r = NodeStatus::new(&who(n), read_status(dir, &n.name), None);
    r.vm = Some(vm_state(dir, n));
    r
}

/// The lab's SSH inside its namespace.
struct LabSsh<'a> {
    dir: &'a LabDir,
    namespace: &'a str,
}

impl Transport for LabSsh<'_> {
    fn command(&self, ip: Ipv4Addr, remote: &str) -> Cmd {
        ssh::command(self.dir, self.namespace, ip, remote)
    }
}

/// Every node: running VMs over SSH (their disk when SSH fails), stopped
/// ones from their disk.
pub fn over_ssh(runner: &dyn Runner, dir: &LabDir, state: &LabState) -> Vec<NodeStatus> {
    let transport = LabSsh {
        dir,
        namespace: &state.namespace,
    };
    // Which VMs run is read once: the rows fetched are matched by name.
    let running: Vec<(Who, Ipv4Addr)> = state
        .nodes
        .iter()
        .filter(|n| vm::running(dir, &n.name))
        .map(|n| (who(n), n.ip))
        .collect();
    let mut fetched = remote::fetch_all(runner, &transport, &running);
    state
        .nodes
        .iter()
        .map(|n| {
            let mut r = match fetched.iter().position(|r| r.name == n.name).map(|i| fetched.swap_remove(i)) {
                Some(r) if r.reachable == Some(true) => r,
                Some(failed) => {
                    let mut r = row(dir, n);
                    r.reachable = Some(false);
                    r.unreachable = failed.unreachable;
                    r
                }
                None => row(dir, n),
            };
            r.vm = Some(vm_state(dir, n));
            r
        })
        .collect()
}

fn read_status(dir: &LabDir, name: &str) -> Result<Option<Status>, String> {
    let disk = dir.disk(name);
    let once = || report::read(&disk).and_then(|r| r.parsed(&disk)).map_err(|e| format!("{e:#}"));
    once().or_else(|_| {
        std::thread::sleep(Duration::from_millis(300));
        once()
    })
}
