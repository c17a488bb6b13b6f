//! Before any work: every host tool the build needs is there, and every
//! package source it will fetch from answers. A build that cannot reach
//! pkgs.k8s.io should say so in its first seconds, naming the source and
//! the offline route, not after ten minutes of mmdebstrap.

use std::time::Duration;

use anyhow::bail;
use piha_config::cluster::Runtime;
use piha_runner::{Cmd, Runner};

use crate::arch::Arch;
use crate::host::doctor::{self, Need};
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

/// What to do without network access to the failed sources: first a command
/// that builds an image when run as printed, from the directory the build
/// ran in, then the other ways.
pub fn offline_route(plan: &Plan) -> String {
    use std::path::Path;
    const DISTRO: &str = "debian-bookworm";
    /// `s` as one shell word.
    fn word(s: &str) -> String {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@%".contains(&b)) {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    }
    /// A path as the user's shell takes it: relative when below the working directory.
    fn shown(path: &Path) -> String {
        let cwd = std::env::current_dir().unwrap_or_default();
        word(&path.strip_prefix(&cwd).unwrap_or(path).display().to_string())
    }
    let req = &plan.req;
    let board = &req.board.name;
    if req.distro.name == DISTRO && plan.extra_repos.is_empty() {
        return "Offline route: this build is on it already (Debian, nothing from outside its archive), so the sources above are the Debian archive itself: `--mirror URL` points the build at a Debian mirror you can reach.".to_string();
    }
    let mirror = match &req.mirror {
        Some(m) if req.distro.name == DISTRO => format!(" --mirror {}", word(m)),
        _ => String::new(),
    };
    let own = Path::new(&req.cluster_label);
    let own = if own.is_file() {
        format!(" --cluster {}", shown(own))
    } else {
        String::new()
    };
    let example = crate::inputs::catalog::data_dir().join("examples/qemu-lab.yaml");
    let lab = std::fs::read_to_string(&example)
        .ok()
        .and_then(|t| piha_config::cluster::ClusterFile::parse(&example, &t).ok());
    let (cluster, note) = match (req.cluster.kubernetes.runtime, lab) {
        (Runtime::Containerd, _) => (own.clone(), String::new()),
        (Runtime::Crio, Some(lab)) => {
            let boards = if lab.nodes.iter().any(|n| n.board == *board) {
                String::new()
            } else {
                format!(" Its nodes are not {board} machines: to stamp its cards for {board}, copy it and set their `board:` to {board}.")
            };
            (
                format!(" --cluster {}", shown(&example)),
                format!(
                    " The cluster's runtime is crio, which no distro archive carries, so the test route builds the QEMU lab cluster `{}` (runtime: containerd) instead.{boards} \
                     To build your own cluster offline, set `kubernetes.runtime: containerd` in it, or put the cri-o .deb into the bundle.",
                    lab.name
                ),
            )
        }
        (Runtime::Crio, None) => (
            " --cluster FILE".to_string(),
            format!(
                " The cluster's runtime is crio, which no distro archive carries: FILE is a cluster file with `kubernetes.runtime: containerd` ({} is missing), or put the cri-o .deb into the bundle.",
                example.display()
            ),
        ),
    };
    format!(
        "Offline route: `piha build --board {board} --distro {DISTRO} --profile test{cluster}{mirror}` (Debian from your host's apt mirror, recording kubeadm instead of the Kubernetes packages), \
         or `piha build --board {board} --distro {DISTRO} --k8s-bundle DIR{own}{mirror}` with the kubeadm, kubelet, kubectl, cri-tools and kubernetes-cni .debs for Kubernetes {} in DIR; \
         `--mirror URL` points the distro at a mirror you can reach.{note}",
        plan.k8s_minor
    )
}
