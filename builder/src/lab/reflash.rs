//! `piha lab reflash NODE`: a node's card replaced, as a user re-flashes an
//! SD card. The VM's power is cut, its disk becomes a fresh copy of its
//! board's image, stamped again from the cluster file (the lab's own, or
//! `--cluster` for a changed one), and the VM powers on; then it waits until
//! the node's agent has settled. Nothing of the old disk survives.
//!
//! While it runs, a prober asks the VIP for `/readyz` (as `check` does), so
//! the result says whether the cluster kept serving: requests, failures, the
//! longest gap. And it says how the node came back: its agent's phase,
//! whether it joined, and (for the init control plane) whether it joined the
//! running cluster instead of `kubeadm init`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use piha_config::secrets::CA_CRT;
use piha_config::status::{INIT_FACT, Status};
use piha_runner::Runner;
use serde::Serialize;

use super::dir::LabDir;
use super::probe::{Prober, Target};
use super::state::LabState;
use super::up::FreshDisk;
use super::{net, nodes, plan, ssh, vm};
use crate::card::report;
use crate::card::stamp::{self, Identity};
use crate::inputs::cluster::load_cluster;

/// What a reflash did.
#[derive(Debug, Clone, Serialize)]
pub struct Reflashed {
    pub node: String,
    /// Seconds from the power cut until the agent settled.
    pub seconds: f64,
    /// The agent's phase at the end (`done` unless it failed or timed out;
    /// `not-waited` with `--no-wait`).
    pub phase: String,
    pub joined: bool,
    /// What the init control plane did, when it did not init (status.json's `init` fact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// The VIP's `/readyz` over the whole reflash.
    pub vip_requests: usize,
    pub vip_failed: usize,
    pub vip_longest_gap: f64,
    /// Why the first failed request failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip_first_failure: Option<String>,
}

/// With `wait: None`, returns once the VM is powered on (phase `not-waited`).
pub fn reflash(
    dir: &LabDir,
    node: &str,
    cluster_file: Option<&Path>,
    wait_for: Option<Duration>,
    runner: &dyn Runner,
) -> anyhow::Result<Reflashed> {
    super::up::require_root()?;
    let state = LabState::existing(dir)?;
    let n = state.node(node)?.clone();
    if !net::exists(runner, &state.namespace) {
        bail!(
            "the lab's network {} is gone (was the host rebooted?); `piha lab down --dir {}` and `piha lab up` again",
            state.namespace,
            dir.root().display()
        );
    }
    if !n.image.is_file() {
        bail!(
            "{}: the image its disk was copied from ({}) is gone, or the lab predates `reflash`; `piha lab down` and `up` again",
            n.name,
            n.image.display()
        );
    }
    // Every refusal before the power is cut: the cluster file, the node in
    // it, and its stamp (secrets, keys) checked as `piha stamp` would.
    let cluster_path = cluster_file.unwrap_or(&state.cluster);
    let cluster = load_cluster(cluster_path)?;
    let key = ssh::ensure_key(runner, dir)?;
    let lab_cluster = plan::lab_cluster(&cluster, &key, state.as_amd64);
    let identity = Identity {
        cluster: &lab_cluster,
        cluster_path,
        secrets_dir: &state.secrets,
        node,
    };
    stamp::check(identity).with_context(|| format!("stamping {node} from {}", cluster_path.display()))?;

    let prober = Prober::start(
        &state.namespace,
        Target::Https {
            ca: state.secrets.join(CA_CRT.rel),
            ip: state.vip,
            port: state.api_port,
            path: "/readyz".into(),
        },
    );
    let start = Instant::now();
    if vm::running(dir, &n.name) {
        vm::power_cut(dir, &n.name)?;
    }
    eprintln!("piha lab: {node}: power cut; writing a fresh disk from {}", n.image.display());
    let disk = FreshDisk {
        name: &n.name,
        machine: n.machine,
        image: &n.image,
        grow_mib: state.disk_grow_mib,
    };
    disk.make(runner, dir, identity)?;
    vm::power_on(runner, &n.argv).with_context(|| format!("powering on {node}"))?;
    eprintln!("piha lab: {node}: powered on with its new card");
    let settled = wait_for.map(|timeout| wait(dir, &state, node, start, timeout));
    let end = Instant::now();
    let w = prober.window(start, end);
    drop(prober);
    let status = read(dir, node);
    Ok(Reflashed {
        node: node.to_string(),
        seconds: end.duration_since(start).as_secs_f64(),
        phase: match settled {
            Some(true) => status
                .as_ref()
                .map(|s| s.phase.as_str().to_string())
                .unwrap_or_else(|| "none".into()),
            Some(false) => "timed-out".into(),
            None => "not-waited".into(),
        },
        joined: status.as_ref().is_some_and(|s| s.joined),
        init: status.as_ref().and_then(|s| s.versions.get(INIT_FACT).cloned()),
        vip_requests: w.requests,
        vip_failed: w.failed,
        vip_longest_gap: w.longest_gap,
        vip_first_failure: w.failures.first().cloned(),
    })
}

/// Until the node's agent settles (from its disk, as `up` waits), printing
/// each change; false on timeout.
fn wait(dir: &LabDir, state: &LabState, node: &str, start: Instant, timeout: Duration) -> bool {
    let Ok(n) = state.node(node) else { return false };
    let mut seen = String::new();
    loop {
        let r = nodes::row(dir, n);
        let now = format!("{} {}", r.phase, r.step);
        if now != seen {
            eprintln!("[{:>5.0}s] {node}: agent {now}", start.elapsed().as_secs_f64());
            seen = now;
        }
        // A fresh disk can still show the old card's last words for a moment:
        // settled only once this boot wrote them.
        if r.settled() && r.boots == 1 {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn read(dir: &LabDir, node: &str) -> Option<Status> {
    let disk = dir.disk(node);
    report::read(&disk).and_then(|r| r.parsed(&disk)).ok().flatten()
}

/// The result as `reflash` prints it.
pub fn summary(r: &Reflashed) -> String {
    let mut out = format!(
        "{}: agent {} after {:.0} s, {}\n",
        r.node,
        r.phase,
        r.seconds,
        if r.joined { "joined" } else { "not joined" }
    );
    if let Some(init) = &r.init {
        out.push_str(&format!("  init control plane: {init}\n"));
    }
    out.push_str(&format!(
        "  VIP /readyz meanwhile: {} requests, {} failed, longest gap {:.2} s\n",
        r.vip_requests, r.vip_failed, r.vip_longest_gap
    ));
    if let Some(f) = &r.vip_first_failure {
        out.push_str(&format!("  first failure: {f}\n"));
    }
    out
}
