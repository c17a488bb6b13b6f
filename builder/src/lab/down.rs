//! `piha lab down`: every VM, the time server, every tap, the bridge and the
//! namespace, gone; the nodes' disks and the state file removed. The built
//! images and the lab's SSH key stay for the next `up`. Works on a lab whose
//! `piha` was killed half-way: whatever the state file names, and every
//! process still in the namespace, is removed.

use std::time::{Duration, Instant};

use anyhow::Context;
use piha_runner::Runner;

use super::dir::LabDir;
use super::net;
use super::state::LabState;
use super::vm;

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub vms: Vec<String>,
    pub processes: usize,
    pub namespace: Option<String>,
}

impl Removed {
    pub fn summary(&self) -> String {
        if self.vms.is_empty() && self.processes == 0 && self.namespace.is_none() {
            return "nothing was running".to_string();
        }
        format!(
            "stopped {} VM(s){}{}, removed {}",
            self.vms.len(),
            if self.vms.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.vms.join(", "))
            },
            if self.processes > 0 {
                format!(" and {} other process(es)", self.processes)
            } else {
                String::new()
            },
            self.namespace
                .as_deref()
                .map(|n| format!("namespace {n} with its bridge and taps"))
                .unwrap_or_else(|| "no namespace".into())
        )
    }
}

/// Removes the lab in `dir`, whatever state it is in.
pub fn clean(dir: &LabDir, runner: &dyn Runner) -> anyhow::Result<Removed> {
    let state = LabState::load(dir).ok().flatten();
    let namespace = state.as_ref().map(|s| s.namespace.clone()).unwrap_or_else(|| dir.namespace());
    let mut removed = Removed::default();
    for n in state.iter().flat_map(|s| s.nodes.iter()) {
        if vm::running(dir, &n.name) {
            vm::power_cut(dir, &n.name)?;
            removed.vms.push(n.name.clone());
        }
    }
    if net::exists(runner, &namespace) {
        // Whatever else runs in the namespace: the time server, a VM started
        // by a `piha` killed before it saved the state, probes.
        let pids = net::pids(runner, &namespace);
        for &pid in &pids {
            vm::kill(pid);
        }
        removed.processes = pids.len();
        wait_gone(runner, &namespace);
        net::delete(runner, &namespace)?;
        removed.namespace = Some(namespace);
    }
    let nodes = dir.nodes();
    if nodes.exists() {
        std::fs::remove_dir_all(&nodes).with_context(|| format!("removing {}", nodes.display()))?;
    }
    for f in [dir.state(), dir.timeserver_log()] {
        if f.exists() {
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
        }
    }
    Ok(removed)
}

fn wait_gone(runner: &dyn Runner, namespace: &str) {
    let start = Instant::now();
    while !net::pids(runner, namespace).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
}
