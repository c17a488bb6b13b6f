//! `piha lab up`: images built or reused, one stamped disk per node, the
//! namespace and its bridge, the time server, every VM powered on, then a
//! wait until every agent has reported `done` or `failed`.
//!
//! Everything that can refuse is checked before anything is created: root,
//! the tools and firmware, a board with no VM, the cluster's secrets and every
//! node's stamp, another lab in the directory. The state file is written
//! before the namespace exists, so a killed `up` leaves nothing `down` (or the
//! next `up`) cannot find.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use piha_config::cluster::ClusterFile;
use piha_runner::{Cmd, Runner, SpawnOutput};
use rustix::fs::{FlockOperation, flock};

use super::dir::LabDir;
use super::nodes;
use super::plan::{self, PlannedNode};
use super::state::{LabState, NodeState};
use super::{down, net, ssh, vm};
use crate::card::stamp::{self, Identity};
use crate::card::{report, secrets};
use crate::day2::node_status::NodeStatus;
use crate::device::target::FileTarget;
use crate::image::info::Profile;
use crate::inputs::cluster::load_cluster;
use crate::pipeline::{self, Options};
use crate::progress::Progress;

/// How `up` was asked to run.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub cluster: PathBuf,
    pub secrets: PathBuf,
    pub profile: Profile,
    /// Boot every node as amd64 whatever its board.
    pub as_amd64: bool,
    /// Boot only these nodes of the cluster file (empty: every node).
    pub only: Vec<String>,
    /// Images to use instead of building: each serves the board its image.json names.
    pub images: Vec<PathBuf>,
    pub accel: vm::Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Added to each node's disk, for growroot to grow into.
    pub disk_grow_mib: u64,
    pub timeout: Duration,
    /// Build options passed on when an image is built.
    pub mirror: Option<String>,
    pub k8s_bundle: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
}

/// Brings the lab up and returns the node table once every agent settled.
pub fn up(dir: &LabDir, opts: &UpOptions, runner: &dyn Runner) -> anyhow::Result<Vec<NodeStatus>> {
    require_root()?;
    let cluster = load_cluster(&opts.cluster)?;
    let planned = plan::plan(&cluster, &opts.cluster, opts.as_amd64, &opts.only)?;
    let missing = plan::missing_tools(&planned);
    if !missing.is_empty() {
        bail!(
            "piha lab needs {} on this host; `piha doctor` says how to install them (scripts/setup-host does on Debian 12)",
            missing.join(", ")
        );
    }
    piha_atomic::create_dirs(dir.root(), piha_atomic::Perm::root(0o755)).with_context(|| format!("creating {}", dir.root().display()))?;
    let _lock = lock(dir)?;
    if let Some(old) = LabState::load(dir)? {
        let running: Vec<&str> = old
            .nodes
            .iter()
            .filter(|n| vm::running(dir, &n.name))
            .map(|n| n.name.as_str())
            .collect();
        if old.complete && !running.is_empty() {
            bail!(
                "a lab already runs in {} (cluster {}, namespace {}, VMs running: {}); take it down first: piha lab down --dir {}",
                dir.root().display(),
                old.cluster_name,
                old.namespace,
                running.join(", "),
                dir.root().display()
            );
        }
        eprintln!("piha lab: cleaning up what an earlier lab left in {}", dir.root().display());
        down::clean(dir, runner)?;
    }
    secrets::ensure(&opts.cluster, &opts.secrets, &cluster)?;
    let key = ssh::ensure_key(runner, dir)?;
    let lab_cluster = plan::lab_cluster(&cluster, &key, opts.as_amd64);
    for n in &planned {
        stamp::check(identity(&lab_cluster, opts, &n.name))?;
    }
    let images = images(dir, opts, &planned, runner)?;

    let namespace = dir.namespace();
    let mut state = LabState::new(
        &std::path::absolute(&opts.cluster)?,
        &std::path::absolute(&opts.secrets)?,
        &cluster.name,
        &namespace,
    );
    state.vip = cluster.api.vip;
    state.api_port = cluster.api.port;
    state.gateway = cluster.network.gateway;
    state.prefix = cluster.network.prefix;
    state.as_amd64 = opts.as_amd64;
    state.disk_grow_mib = opts.disk_grow_mib;
    state.nodes = planned
        .iter()
        .map(|n| node_state(dir, opts, &namespace, n, &images[&n.board]))
        .collect();
    state.save(dir)?;

    let taps: Vec<String> = planned.iter().map(|n| n.tap.clone()).collect();
    net::create(runner, &namespace, cluster.network.gateway, cluster.network.prefix, &taps)?;
    serve_time(dir, &cluster, &namespace)?;
    let started = Instant::now();
    for n in &planned {
        let disk = FreshDisk {
            name: &n.name,
            machine: n.machine,
            image: &images[&n.board],
            grow_mib: opts.disk_grow_mib,
        };
        disk.make(runner, dir, identity(&lab_cluster, opts, &n.name))?;
        vm::power_on(runner, &state.node(&n.name)?.argv).with_context(|| format!("powering on {}", n.name))?;
        eprintln!("piha lab: {} powered on ({}, {})", n.name, n.ip, n.machine.program());
    }
    state.complete = true;
    state.save(dir)?;
    wait_settled(dir, &state, started, opts.timeout)
}

pub fn require_root() -> anyhow::Result<()> {
    if !piha_atomic::running_as_root() {
        bail!("piha lab needs root: it creates a network namespace, a bridge, taps and VMs. Run it as root (sudo piha lab ...)");
    }
    Ok(())
}

fn lock(dir: &LabDir) -> anyhow::Result<File> {
    let f = File::create(dir.lock()).with_context(|| format!("creating {}", dir.lock().display()))?;
    if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "another `piha lab up` is working in {} right now; wait for it, or take that lab down with `piha lab down --dir {}`",
            dir.root().display(),
            dir.root().display()
        );
    }
    Ok(f)
}

fn identity<'a>(cluster: &'a ClusterFile, opts: &'a UpOptions, node: &'a str) -> Identity<'a> {
    Identity {
        cluster,
        cluster_path: &opts.cluster,
        secrets_dir: &opts.secrets,
        node,
    }
}

fn node_state(dir: &LabDir, opts: &UpOptions, namespace: &str, n: &PlannedNode, image: &Path) -> NodeState {
    let spec = vm::Spec {
        name: &n.name,
        machine: n.machine,
        accel: opts.accel.resolve(),
        cpus: opts.cpus,
        memory_mib: opts.memory_mib,
        tap: &n.tap,
        mac: &n.mac,
    };
    NodeState {
        name: n.name.clone(),
        role: n.role,
        ip: n.ip,
        board: n.board.clone(),
        machine: n.machine,
        tap: n.tap.clone(),
        mac: n.mac.clone(),
        argv: vm::argv(dir, namespace, &spec),
        image: image.to_path_buf(),
    }
}

/// One image per board: given with `--image`, or built now into the lab
/// directory (the root filesystem and the agent come from piha's build cache,
/// so a build whose inputs did not change takes minutes, not a fresh bootstrap).
fn images(dir: &LabDir, opts: &UpOptions, planned: &[PlannedNode], runner: &dyn Runner) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut given = BTreeMap::new();
    for path in &opts.images {
        let info = report::read(path)?.image.with_context(|| {
            format!(
                "{} has no image.json on its PIHA-CFG partition: is it an image built by `piha build`?",
                path.display()
            )
        })?;
        let board = info
            .board
            .with_context(|| format!("{}: image.json names no board", path.display()))?;
        given.insert(board, path.clone());
    }
    let mut out = BTreeMap::new();
    for n in planned {
        if out.contains_key(&n.board) {
            continue;
        }
        let image = match given.get(&n.board) {
            Some(p) => p.clone(),
            None => built_image(dir, opts, &n.board, runner)?,
        };
        out.insert(n.board.clone(), image);
    }
    Ok(out)
}

fn built_image(dir: &LabDir, opts: &UpOptions, board: &str, runner: &dyn Runner) -> anyhow::Result<PathBuf> {
    let out = dir.images().join(board);
    eprintln!(
        "piha lab: building the {board} image ({} profile) into {}",
        opts.profile,
        out.display()
    );
    let build = Options {
        board: board.to_string(),
        distro: None,
        cluster: Some(opts.cluster.clone()),
        out,
        profile: opts.profile,
        k8s_bundle: opts.k8s_bundle.clone(),
        mirror: opts.mirror.clone(),
        cache_dir: opts.cache_dir.clone(),
        no_cache: false,
    };
    Ok(pipeline::build(&build, runner, &Progress::auto())?.image)
}

/// A node's disk made afresh: a sparse copy of its board's image, grown
/// for growroot, stamped for the node through the same library as `piha
/// stamp`, and new firmware variables. What `up` does for every node and
/// `reflash` for one.
pub(super) struct FreshDisk<'a> {
    pub name: &'a str,
    pub machine: vm::Machine,
    pub image: &'a Path,
    pub grow_mib: u64,
}

impl FreshDisk<'_> {
    pub(super) fn make(&self, runner: &dyn Runner, dir: &LabDir, identity: Identity<'_>) -> anyhow::Result<()> {
        let node_dir = dir.node(self.name);
        piha_atomic::create_dirs(&node_dir, piha_atomic::Perm::root(0o755)).with_context(|| format!("creating {}", node_dir.display()))?;
        let _ = std::fs::remove_file(dir.console(self.name));
        let disk = dir.disk(self.name);
        runner
            .run(
                &Cmd::new("cp")
                    .args(["--sparse=always", "--reflink=auto"])
                    .arg(self.image)
                    .arg(&disk),
            )
            .with_context(|| format!("copying {} for {}", self.image.display(), self.name))?;
        let f = std::fs::OpenOptions::new().write(true).open(&disk)?;
        let len = f.metadata()?.len();
        f.set_len(len + self.grow_mib * 1024 * 1024)?;
        drop(f);
        let mut target = FileTarget::open_existing(&disk).with_context(|| format!("opening {}", disk.display()))?;
        stamp::onto(identity, &mut target)?;
        vm::firmware_vars(self.machine, &dir.firmware_vars(self.name))?;
        Ok(())
    }
}

/// The time server on the gateway, when the cluster names the gateway as an
/// NTP server: run inside the namespace by this same binary.
fn serve_time(dir: &LabDir, cluster: &ClusterFile, namespace: &str) -> anyhow::Result<()> {
    let gateway = cluster.network.gateway.to_string();
    if !cluster.network.ntp.contains(&gateway) {
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding this piha binary")?;
    let cmd = net::exec(
        namespace,
        Cmd::new(exe.display().to_string()).args(["lab", "serve-time", "--address", &gateway]),
    );
    piha_runner::spawn(&cmd, SpawnOutput::Detached(dir.timeserver_log())).context("starting the lab's time server")?;
    Ok(())
}

/// Polls every node until each agent has settled (or its VM stopped), printing
/// each change; the table at the end.
fn wait_settled(dir: &LabDir, state: &LabState, started: Instant, timeout: Duration) -> anyhow::Result<Vec<NodeStatus>> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let rows = nodes::rows(dir, state);
        for r in &rows {
            let vm = r.vm.unwrap_or("-");
            let now = format!("{vm} {} {}", r.phase, r.step);
            if seen.get(&r.name) != Some(&now) {
                eprintln!(
                    "[{:>5.0}s] {:<10} vm {}, agent {} {}",
                    started.elapsed().as_secs_f64(),
                    r.name,
                    vm,
                    r.phase,
                    r.step
                );
                seen.insert(r.name.clone(), now);
            }
        }
        if rows.iter().all(|r| r.settled() || r.vm == Some("stopped")) {
            return Ok(rows);
        }
        if started.elapsed() > timeout {
            eprint!("{}", nodes::table(&rows));
            bail!(
                "not every agent finished within {} s; the lab keeps running: `piha lab status --dir {}` and the consoles in {}",
                timeout.as_secs(),
                dir.root().display(),
                dir.nodes().display()
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}
