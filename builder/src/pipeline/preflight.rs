//! Before any work: every host tool the build needs is there, and every
//! package source it will fetch from answers. A build that cannot reach
//! pkgs.k8s.io should say so in its first seconds, naming the source and
//! the offline route, not after ten minutes of mmdebstrap.

use std::time::Duration;

use anyhow::bail;
use piha_config::cluster::Runtime;
use piha_runner::{Cmd, Runner};

use crate::board::Arch;
use crate::doctor::{self, Need};
use crate::pipeline::plan::{Plan, Reachable};
use crate::progress::Progress;

/// How long one source may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Fails with every required tool that is missing.
pub fn check_tools(plan: &Plan, runner: &dyn Runner) -> anyhow::Result<()> {
    let foreign = Arch::host() != Some(plan.arch);
    let checks = doctor::build_checks(runner, foreign, &plan.req.distro.keyring);
    let missing: Vec<_> = checks
        .iter()
        .filter(|c| !c.ok && matches!(c.need, Need::Required | Need::ForeignArch))
        .cloned()
        .collect();
    if !missing.is_empty() {
        bail!(
            "host tools are missing, nothing was built:\n{}",
            doctor::render(&missing).trim_end()
        );
    }
    Ok(())
}

/// Fetches each source's index with curl (in parallel); fails naming every
/// unreachable one and the offline route.
pub fn check_sources(plan: &Plan, runner: &dyn Runner, progress: &Progress) -> anyhow::Result<()> {
    let reachables = plan.reachables();
    let task = progress.task(&format!("preflight: {} package sources", reachables.len()));
    let failures = unreachable(&reachables, runner, TIMEOUT);
    if failures.is_empty() {
        task.finish();
        return Ok(());
    }
    drop(task);
    let mut msg = String::new();
    for (r, err) in &failures {
        msg.push_str(&format!("cannot reach {} ({}): {err}\n", r.url, r.what));
    }
    msg.push_str(&offline_route(plan));
    bail!("{msg}")
}

/// The sources that did not answer, with curl's error.
pub fn unreachable(reachables: &[Reachable], runner: &dyn Runner, timeout: Duration) -> Vec<(Reachable, String)> {
    let secs = timeout.as_secs().max(1).to_string();
    std::thread::scope(|s| {
        let handles: Vec<_> = reachables
            .iter()
            .map(|r| {
                let secs = secs.clone();
                s.spawn(move || {
                    let cmd = Cmd::new("curl")
                        .args(["-fsS", "-o", "/dev/null", "--connect-timeout", &secs, "--max-time", &secs])
                        .arg(&r.url);
                    runner
                        .run(&cmd)
                        .err()
                        .map(|e| (r.clone(), e.stderr_tail().map(str::to_string).unwrap_or_else(|| e.to_string())))
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok().flatten()).collect()
    })
}

/// What to do without network access to the failed sources.
pub fn offline_route(plan: &Plan) -> String {
    let board = &plan.req.board.name;
    let crio = if plan.req.cluster.kubernetes.runtime == Runtime::Crio {
        " The cluster's runtime is crio, which no distro archive carries: add the cri-o .deb to the bundle, or build with a containerd cluster (kubernetes.runtime: containerd, as in examples/qemu-lab.yaml)."
    } else {
        ""
    };
    format!(
        "Offline route: `piha build --board {board} --distro debian-bookworm --profile test` (Debian from your host's apt mirror, recording kubeadm instead of the Kubernetes packages), \
         or `piha build --board {board} --distro debian-bookworm --k8s-bundle DIR` with the kubeadm, kubelet, kubectl, cri-tools and kubernetes-cni .debs for Kubernetes {} in DIR; \
         `--mirror URL` points the distro at a mirror you can reach.{crio}",
        plan.k8s_minor
    )
}
