//! Helpers for the tests that run the real piha-agent binary on a scratch
//! node: a card stamped for a node of examples/qemu-lab.yaml, a root shaped
//! like a booted node, and a snapshot of everything the agent left behind.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use piha_config::cluster::{ClusterFile, Role};
use piha_config::node::{CardFacts, NetworkRenderer, NodeConfig};
use piha_config::secrets::{BOOTSTRAP_TOKEN, CA_CERT_HASH, for_role};
use tempfile::TempDir;

pub const TOKEN: &str = "abcdef.0123456789abcdef";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

pub fn node_config(name: &str) -> NodeConfig {
    let file = repo().join("examples/qemu-lab.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let cluster = ClusterFile::parse(&file, &text).expect("the example cluster parses");
    NodeConfig::for_node(&cluster, name, NetworkRenderer::Networkd).expect("the node exists")
}

/// A scratch directory in memory where there is one: the agent fsyncs every
/// write (as it must on a node), which on a disk makes the hundreds of runs of
/// the power-cut test take minutes instead of seconds.
pub fn scratch_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// A scratch node: `root` is its filesystem, `card` its PIHA-CFG.
pub struct Node {
    pub name: String,
    pub root: TempDir,
    pub card: TempDir,
}

impl Node {
    /// A node of qemu-lab, stamped, with what a booted Debian node has (cgroup v2
    /// with memory, a swap line in fstab, the runtime's socket) and the canned
    /// command output a director needs in a dry run (`ip -j`, `ipvsadm -Ln`).
    pub fn new(name: &str) -> Node {
        let cfg = node_config(name);
        let node = Node {
            name: name.to_string(),
            root: scratch_dir(),
            card: scratch_dir(),
        };
        let mut written: Vec<(&str, Vec<u8>)> = Vec::new();
        for s in for_role(cfg.node.role) {
            let contents = if *s == BOOTSTRAP_TOKEN {
                format!("{TOKEN}\n")
            } else if *s == CA_CERT_HASH {
                format!("sha256:{}\n", "ab".repeat(32))
            } else {
                format!("test material for {}\n", s.rel)
            };
            node.write_card(&format!("secrets/{}", s.rel), &contents);
            written.push((s.rel, contents.into_bytes()));
        }
        // node.yaml carries each secret's digest, as `piha stamp` writes it.
        let refs: Vec<(&str, &[u8])> = written.iter().map(|(r, b)| (*r, b.as_slice())).collect();
        let mut cfg = cfg;
        cfg.card = CardFacts::new(1_700_000_000, (cfg.node.role != Role::Director).then_some(1_699_990_000), &refs);
        std::fs::write(node.card.path().join("node.yaml"), cfg.to_yaml()).unwrap();
        node.write("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n");
        node.write("/etc/fstab", "UUID=1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n");
        let socket = node.host(cfg.cluster.runtime.socket_path());
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let ip = std::fs::read_to_string(repo().join("tests/agent/ip-addr.json")).unwrap();
        node.write("/var/lib/piha/dry-run/ip.stdout", &ip);
        // The init control plane's TLS probe of the VIP (`timeout 10 openssl
        // s_client`): refused, as before any cluster exists.
        node.write("/var/lib/piha/dry-run/timeout.fail", "connect:errno=111\n");
        let ipvs = std::fs::read_to_string(repo().join("tests/agent/ipvsadm-Ln.txt"))
            .unwrap()
            .replace("10.10.197.101", "10.0.2.100");
        node.write("/var/lib/piha/dry-run/ipvsadm.stdout", &ipvs);
        node
    }

    pub fn host(&self, abs: &str) -> PathBuf {
        self.root.path().join(abs.trim_start_matches('/'))
    }

    pub fn write(&self, abs: &str, contents: &str) {
        let p = self.host(abs);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    pub fn write_card(&self, rel: &str, contents: &str) {
        let p = self.card.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    /// The real binary, on this node, with commands logged instead of run.
    pub fn agent(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_piha-agent"));
        c.args(args);
        c.arg("--root").arg(self.root.path());
        if args.first().is_none_or(|a| *a == "run" || *a == "status") {
            c.arg("--config-dir").arg(self.card.path());
        }
        if args.first().is_none_or(|a| *a == "run") {
            // One try per step, as one boot that gives up: the tests look at
            // what a failed run leaves (the default retries without limit).
            c.arg("--dry-run-commands").args(["--tries", "1"]);
        }
        c.env_remove("PIHA_AGENT_CRASH_AT")
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info");
        c
    }

    pub fn run(&self) -> Output {
        self.agent(&["run"]).output().unwrap()
    }

    pub fn command_log(&self) -> String {
        std::fs::read_to_string(self.host("/var/lib/piha/commands.log")).unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.card.path().join("status.json")).unwrap()).unwrap()
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.host("/var/lib/piha/state.json")).unwrap()).unwrap()
    }
}

/// Every file under `dir` (relative path → mode and content); symlinks and
/// sockets by kind only.
pub fn files(dir: &Path) -> BTreeMap<String, (u32, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                stack.push(p);
                out.insert(format!("{rel}/"), (mode, String::new()));
            } else if meta.is_file() {
                out.insert(rel, (mode, String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()));
            } else {
                out.insert(rel, (mode, "<special>".into()));
            }
        }
    }
    out
}

/// The commands of each step in a command log (`# step NAME` then commands).
pub fn commands_per_step(log: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut step = String::new();
    for line in log.lines() {
        match line.strip_prefix("# step ") {
            Some(s) => step = s.to_string(),
            None => out.entry(step.clone()).or_default().push(line.to_string()),
        }
    }
    out
}
