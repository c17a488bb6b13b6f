//! Test fixtures: a node of examples/qemu-lab.yaml stamped on a scratch card,
//! a scratch root shaped like a node, and stand-ins for the runner, the
//! network probe and the clock.

use std::net::SocketAddrV4;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use piha_config::cluster::ClusterFile;
use piha_config::cluster::Role;
use piha_config::node::{CardFacts, NetworkRenderer, NodeConfig};
use piha_config::secrets::{BOOTSTRAP_TOKEN, CA_CERT_HASH, for_role};
use piha_config::status::Status;
use piha_runner::{Cmd, Output, RecordingRunner, RunError, Runner, STDERR_TAIL, tail};
use tempfile::TempDir;

use crate::agent::{self, Ending, Hooks};
use crate::api_wait::Probe;
use crate::crash::Guard;
use crate::paths::Paths;
use crate::retry::{Backoff, Sleeper};
use crate::state::State;
use crate::steps::{Env, Timings};

pub const QEMU_LAB: &str = include_str!("../../examples/qemu-lab.yaml");
pub const TOKEN: &str = "abcdef.0123456789abcdef";

/// A node of the shared QEMU fixture cluster (lb1, cp1 (init), cp2, cp3, w1).
pub fn node(name: &str, renderer: NetworkRenderer) -> NodeConfig {
    let cluster = ClusterFile::parse(Path::new("examples/qemu-lab.yaml"), QEMU_LAB).expect("the example cluster parses");
    NodeConfig::for_node(&cluster, name, renderer).expect("the node exists")
}

pub fn ca_cert_hash() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

/// When the test cards were stamped, and when their CA starts.
pub const STAMPED_AT: u64 = 1_700_000_000;
pub const CA_NOT_BEFORE: u64 = 1_699_990_000;

/// Writes the role's secrets and node.yaml (with their digests) as `piha stamp` does.
pub fn stamp(card: &Path, cfg: &NodeConfig) {
    std::fs::create_dir_all(card).unwrap();
    let mut written: Vec<(&str, Vec<u8>)> = Vec::new();
    for s in for_role(cfg.node.role) {
        let path = card.join("secrets").join(s.rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let contents = if *s == BOOTSTRAP_TOKEN {
            format!("{TOKEN}\n")
        } else if *s == CA_CERT_HASH {
            format!("{}\n", ca_cert_hash())
        } else {
            // The agent copies these byte for byte; it never parses them.
            format!("test material for {}\n", s.rel)
        };
        std::fs::write(path, &contents).unwrap();
        written.push((s.rel, contents.into_bytes()));
    }
    let refs: Vec<(&str, &[u8])> = written.iter().map(|(r, b)| (*r, b.as_slice())).collect();
    let mut cfg = cfg.clone();
    cfg.card = CardFacts::new(STAMPED_AT, (cfg.node.role != Role::Director).then_some(CA_NOT_BEFORE), &refs);
    std::fs::write(card.join("node.yaml"), cfg.to_yaml()).unwrap();
}

/// What `openssl s_client` says when nothing listens at the VIP.
pub const VIP_REFUSED: &str = "40C7B1F5E07F0000:error:8000006F:system library:BIO_connect:Connection refused:../crypto/bio/bio_sock2.c:114:calling connect()\nconnect:errno=111";

/// Runs commands by recording them; a command whose line starts with a
/// queued prefix fails once with the queued stderr.
pub struct TestRunner {
    pub rec: Arc<RecordingRunner>,
    failures: Mutex<Vec<(String, String)>>,
    /// What the TLS probe of the VIP (`existing_cluster`) gets: `None`, a
    /// handshake that verifies; `Some(stderr)`, openssl failing with it.
    /// Default: refused, as when no cluster exists yet.
    pub vip_tls: Mutex<Option<String>>,
    /// Per address (`10.0.2.12:6443`), overriding `vip_tls` for that address.
    pub tls_at: Mutex<std::collections::BTreeMap<String, Option<String>>>,
}

impl TestRunner {
    pub fn fail_once(&self, prefix: &str, stderr: &str) {
        self.failures.lock().unwrap().push((prefix.to_string(), stderr.to_string()));
    }
}

impl Runner for TestRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        let out = self.rec.run(cmd);
        let line = cmd.display();
        if line.contains("openssl s_client") {
            let at = cmd
                .args
                .iter()
                .skip_while(|a| *a != "-connect")
                .nth(1)
                .map(|a| a.to_string_lossy().into_owned());
            let answer = match at.and_then(|a| self.tls_at.lock().unwrap().get(&a).cloned()) {
                Some(answer) => answer,
                None => self.vip_tls.lock().unwrap().clone(),
            };
            if let Some(stderr) = answer {
                return Err(RunError::Failed {
                    command: line,
                    status: "exit status: 1".into(),
                    stderr_tail: stderr,
                });
            }
            return out;
        }
        let mut failures = self.failures.lock().unwrap();
        if let Some(i) = failures.iter().position(|(p, _)| line.starts_with(p.as_str())) {
            let (_, stderr) = failures.remove(i);
            return Err(RunError::Failed {
                command: line,
                status: "exit status: 1".into(),
                stderr_tail: tail(stderr.as_bytes(), STDERR_TAIL),
            });
        }
        out
    }
}

/// The local API answers once `kubeadm init` ran; the VIP refuses the first
/// `vip_refusals` tries. Every try is recorded.
pub struct TestProbe {
    rec: Arc<RecordingRunner>,
    pub vip_refusals: Mutex<u32>,
    pub tries: Mutex<Vec<(SocketAddrV4, bool)>>,
}

impl Probe for TestProbe {
    fn answers(&self, addr: SocketAddrV4) -> Result<(), String> {
        let ok = if addr.ip().is_loopback() {
            self.rec.command_lines().iter().any(|l| l.starts_with("kubeadm init"))
        } else {
            let mut refusals = self.vip_refusals.lock().unwrap();
            if *refusals > 0 {
                *refusals -= 1;
                false
            } else {
                true
            }
        };
        // Marked in the command log too, so tests can check the order of waits and commands.
        self.rec
            .calls
            .lock()
            .unwrap()
            .push(Cmd::new("#probe").arg(addr.to_string()).arg(if ok { "answers" } else { "refused" }));
        self.tries.lock().unwrap().push((addr, ok));
        if ok { Ok(()) } else { Err("connection refused".into()) }
    }
}

/// Records pauses instead of sleeping.
#[derive(Default)]
pub struct NoSleep(pub Mutex<Vec<Duration>>);

impl Sleeper for NoSleep {
    fn sleep(&self, d: Duration) {
        self.0.lock().unwrap().push(d);
    }
}

/// A scratch directory, in memory where there is one (the agent fsyncs every write).
pub fn scratch_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// A scratch node: root and card directories, and the stand-ins.
pub struct Scratch {
    /// Kept so the directory lives as long as the test; used through `paths`.
    _root: TempDir,
    pub card: TempDir,
    pub paths: Paths,
    pub runner: TestRunner,
    pub probe: TestProbe,
    pub sleeper: NoSleep,
    pub clock: TestClock,
    pub timings: Timings,
}

/// A clock for tests: first the queued `readings`, then `now`, which moves
/// a minute forward at each reading (so a wait for it ends).
pub struct TestClock {
    pub readings: Mutex<std::collections::VecDeque<u64>>,
    pub now: Mutex<u64>,
}

impl crate::clock::Clock for TestClock {
    fn now(&self) -> u64 {
        if let Some(t) = self.readings.lock().unwrap().pop_front() {
            return t;
        }
        let mut now = self.now.lock().unwrap();
        *now += 60;
        *now
    }
}

impl Scratch {
    /// `name` from qemu-lab, stamped, on a root that looks like a booted
    /// Debian node (cgroup v2 with memory, a swap line in fstab, the runtime's socket).
    pub fn new(name: &str) -> Scratch {
        let cfg = node(name, NetworkRenderer::Networkd);
        let root = scratch_dir();
        let card = scratch_dir();
        stamp(card.path(), &cfg);
        let paths = Paths::new(root.path(), card.path());
        let host = |p: &str| {
            let path = paths.host(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            path
        };
        std::fs::write(
            host("/sys/fs/cgroup/cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        std::fs::write(host("/etc/fstab"), "UUID=1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n").unwrap();
        let socket = host(cfg.cluster.runtime.socket_path());
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let rec = Arc::new(RecordingRunner::new());
        let quick = Backoff::new(Duration::from_millis(1), Duration::from_millis(4), Some(3));
        let timings = Timings {
            // One try per run unless a test asks for more: most tests look at
            // what one failed run leaves (as `piha-agent run --tries 1`).
            step_tries: Backoff::new(Duration::from_secs(5), Duration::from_secs(60), Some(1)),
            runtime_socket: quick,
            remote_api: Backoff::new(Duration::from_secs(1), Duration::from_secs(30), Some(20)),
            local_api: quick,
            cni_apply: quick,
            ipvs: quick,
            join_attempts: 2,
            join_pause: Duration::from_secs(60),
            time_sync_tries: 1,
            clock: quick,
            system_call: quick,
        };
        Scratch {
            _root: root,
            card,
            paths,
            runner: TestRunner {
                rec: rec.clone(),
                failures: Mutex::new(Vec::new()),
                vip_tls: Mutex::new(Some(VIP_REFUSED.to_string())),
                tls_at: Mutex::new(Default::default()),
            },
            probe: TestProbe {
                rec,
                vip_refusals: Mutex::new(0),
                tries: Mutex::new(Vec::new()),
            },
            sleeper: NoSleep::default(),
            clock: TestClock {
                readings: Mutex::new(Default::default()),
                now: Mutex::new(STAMPED_AT + 60),
            },
            timings,
        }
    }

    pub fn env(&self) -> Env<'_> {
        Env {
            paths: &self.paths,
            runner: &self.runner,
            probe: &self.probe,
            sleeper: &self.sleeper,
            clock: &self.clock,
            timings: &self.timings,
        }
    }

    /// One run of the agent, as on one boot.
    pub fn run(&self) -> Ending {
        let guard = Guard::new(None);
        agent::run(
            &self.env(),
            &Hooks {
                guard: &guard,
                command_log: None,
            },
        )
    }

    pub fn status(&self) -> Status {
        serde_json::from_str(&std::fs::read_to_string(self.paths.status_file()).unwrap()).unwrap()
    }

    pub fn state(&self) -> State {
        State::load(&self.paths.state_file()).unwrap()
    }

    /// Commands (and `#probe` lines) so far, as a shell shows them.
    pub fn commands(&self) -> Vec<String> {
        self.runner.rec.command_lines()
    }

    pub fn clear_commands(&self) {
        self.runner.rec.calls.lock().unwrap().clear();
    }

    /// Position of the first command starting with `prefix`.
    pub fn position(&self, prefix: &str) -> Option<usize> {
        self.commands().iter().position(|c| c.starts_with(prefix))
    }

    pub fn read(&self, abs: &str) -> String {
        std::fs::read_to_string(self.paths.host(abs)).unwrap_or_else(|e| panic!("{abs}: {e}"))
    }

    pub fn mode(&self, abs: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(self.paths.host(abs))
            .unwrap_or_else(|e| panic!("{abs}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    }
}
