//! The agent's steps, in order: read-config → identity → host-prep → runtime
//! → the role's step → done. Each is idempotent: running it twice leaves the
//! node as running it once, so a power cut anywhere is recovered by running
//! the interrupted step again on the next boot (`agent::run` does that).
//! Steps record progress marks in the state where "again" needs care
//! (kubeadm: see `kubeadm.rs`).
//!
//! Power cuts, step by step:
//! - files are replaced atomically (`atomic.rs`) and compared before
//!   writing, so a cut leaves the old or the new file, and the re-run
//!   rewrites only what differs;
//! - "reload X because its file changed" can be skipped by a cut after the
//!   write: harmless, because a power cut is a reboot and every service
//!   starts from the files on disk (networkd, chrony, containerd, keepalived);
//! - commands are repeatable (`modprobe`, `systemctl enable --now`, `mask`,
//!   `swapoff -a`, `hostname`), and waits simply wait again;
//! - kubeadm is the exception, handled with marks and `kubeadm reset -f`;
//! - secrets leave the card only in `done`, after the role step is recorded.
//!
//! `tests/agent_powercut.rs` cuts the real binary at every point of every step.

pub mod director;
pub mod done;
pub mod host_prep;
pub mod identity;
pub mod init_control_plane;
pub mod join_control_plane;
pub mod join_worker;
pub mod kubeadm;
pub mod read_config;
pub mod runtime;

use std::time::Duration;

use piha_config::node::NodeConfig;
use piha_config::render::kubeadm::{Action, action};
use piha_runner::Runner;

use crate::api_wait::Probe;
use crate::clock::Clock;
use crate::paths::Paths;
use crate::retry::{Backoff, Sleeper};
use crate::state::Store;

/// One step of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ReadConfig,
    Identity,
    HostPrep,
    Runtime,
    InitControlPlane,
    JoinControlPlane,
    JoinWorker,
    Director,
    Done,
}

impl Step {
    /// The name in state.json, status.json and `PIHA_AGENT_CRASH_AT`.
    pub fn name(self) -> &'static str {
        match self {
            Step::ReadConfig => "read-config",
            Step::Identity => "identity",
            Step::HostPrep => "host-prep",
            Step::Runtime => "runtime",
            Step::InitControlPlane => "init-control-plane",
            Step::JoinControlPlane => "join-control-plane",
            Step::JoinWorker => "join-worker",
            Step::Director => "director",
            Step::Done => "done",
        }
    }

    /// Steps that run on every boot: the config is re-read, identity
    /// re-applied (a re-stamped card changes the node), a director's
    /// keepalived.conf re-rendered (a re-stamped card may list another set of
    /// control planes), and secrets scrubbed if a card was re-stamped with them.
    pub fn every_boot(self) -> bool {
        matches!(self, Step::ReadConfig | Step::Identity | Step::Director | Step::Done)
    }

    /// The step that makes the node a member of the cluster (or its director).
    pub fn is_role(self) -> bool {
        matches!(
            self,
            Step::InitControlPlane | Step::JoinControlPlane | Step::JoinWorker | Step::Director
        )
    }

    /// The steps for this node. Directors run no container runtime.
    pub fn plan(cfg: &NodeConfig) -> Vec<Step> {
        let role = match action(cfg) {
            Some(Action::Init) => Step::InitControlPlane,
            Some(Action::JoinControlPlane) => Step::JoinControlPlane,
            Some(Action::JoinWorker) => Step::JoinWorker,
            None => Step::Director,
        };
        let mut steps = vec![Step::ReadConfig, Step::Identity, Step::HostPrep];
        if role != Step::Director {
            steps.push(Step::Runtime);
        }
        steps.push(role);
        steps.push(Step::Done);
        steps
    }

    /// Whether the step runs kubeadm, which needs a clock past the CA's start.
    pub fn runs_kubeadm(self) -> bool {
        matches!(self, Step::InitControlPlane | Step::JoinControlPlane | Step::JoinWorker)
    }

    /// Every step that depends on the node's identity (re-run for a new one).
    pub const AFTER_IDENTITY: [Step; 7] = [
        Step::HostPrep,
        Step::Runtime,
        Step::InitControlPlane,
        Step::JoinControlPlane,
        Step::JoinWorker,
        Step::Director,
        Step::Done,
    ];

    /// Runs the step (not read-config, which `agent::run` does itself).
    /// Returns facts to keep in the report (e.g. the CNI applied).
    pub fn run(self, env: &Env, cfg: &NodeConfig, store: &mut Store) -> anyhow::Result<Vec<(String, String)>> {
        match self {
            Step::ReadConfig => Ok(Vec::new()),
            Step::Identity => identity::run(env, cfg, store).map(|()| Vec::new()),
            Step::HostPrep => host_prep::run(env, cfg).map(|()| Vec::new()),
            Step::Runtime => runtime::run(env, cfg).map(|()| Vec::new()),
            Step::InitControlPlane => init_control_plane::run(env, cfg, store),
            Step::JoinControlPlane => join_control_plane::run(env, cfg, store).map(|()| Vec::new()),
            Step::JoinWorker => join_worker::run(env, cfg, store).map(|()| Vec::new()),
            Step::Director => director::run(env, cfg).map(|()| Vec::new()),
            Step::Done => done::run(env).map(|()| Vec::new()),
        }
    }
}

/// What every step works with. Everything that touches the machine goes
/// through `runner` (commands), `probe` (network) and `sleeper` (time), so
/// tests replace all three; files go under `paths.root`.
pub struct Env<'a> {
    pub paths: &'a Paths,
    pub runner: &'a dyn Runner,
    pub probe: &'a dyn Probe,
    pub sleeper: &'a dyn Sleeper,
    pub clock: &'a dyn Clock,
    pub timings: &'a Timings,
}

/// How long the agent waits for things. Every wait inside a step is bounded;
/// a step that fails is tried again per `step_tries`, which has no bound, so a
/// joining node waits for the cluster's API for as long as it takes.
#[derive(Debug, Clone)]
pub struct Timings {
    /// The container runtime's socket after starting it.
    pub runtime_socket: Backoff,
    /// A failed step, tried again in the same run: unbounded by default (no
    /// reboot is needed to recover), the pause capped at a minute, so a node
    /// notices a recovered cluster within a minute.
    pub step_tries: Backoff,
    /// The API at VIP:port before a join, within one try of the step: six
    /// tries over about half a minute, then the step fails with "did not
    /// answer" (shown in status.json as a retry) and is tried again per
    /// `step_tries`, so a node waiting for its cluster shows it.
    pub remote_api: Backoff,
    /// The local API server after `kubeadm init` (kubeadm itself waited for it; this only confirms).
    pub local_api: Backoff,
    /// `kubectl apply` of the CNI manifest right after init (the API may still restart once).
    pub cni_apply: Backoff,
    /// keepalived programming the IPVS virtual server.
    pub ipvs: Backoff,
    /// `kubeadm join` tries in one run, with `kubeadm reset -f` between them.
    pub join_attempts: u32,
    /// Pause between join tries. Long enough for the cluster to mark this
    /// node's old Node object NotReady (40 s node-monitor grace period), which a
    /// re-join after a reset needs.
    pub join_pause: Duration,
    /// `chronyc waitsync` tries, 2 s apart, after configuring time sync.
    pub time_sync_tries: u32,
    /// A clock behind the CA's start, before kubeadm: unbounded, the pause capped at 30 s.
    pub clock: Backoff,
    /// Calls to system services over D-Bus (`networkctl reload`, `netplan
    /// apply`): on a machine busy with its first boot they can time out
    /// (D-Bus waits 25 s) and succeed a moment later.
    pub system_call: Backoff,
}

impl Default for Timings {
    fn default() -> Self {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        Timings {
            runtime_socket: Backoff::new(ms(250), s(5), Some(25)),
            step_tries: Backoff::new(s(5), s(60), None),
            remote_api: Backoff::new(s(1), s(30), Some(6)),
            local_api: Backoff::new(ms(500), s(10), Some(40)),
            cni_apply: Backoff::new(s(2), s(20), Some(8)),
            ipvs: Backoff::new(ms(500), s(5), Some(12)),
            join_attempts: 3,
            join_pause: s(60),
            time_sync_tries: 15,
            clock: Backoff::new(s(2), s(30), None),
            system_call: Backoff::new(s(2), s(10), Some(4)),
        }
    }
}

#[cfg(test)]
mod tests {
    use piha_config::node::NetworkRenderer;

    use super::Step;
    use crate::testing::node;

    #[test]
    fn plans_per_role() {
        let names = |n: &str| {
            Step::plan(&node(n, NetworkRenderer::Networkd))
                .into_iter()
                .map(Step::name)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(names("cp1"), "read-config identity host-prep runtime init-control-plane done");
        assert_eq!(names("cp2"), "read-config identity host-prep runtime join-control-plane done");
        assert_eq!(names("w1"), "read-config identity host-prep runtime join-worker done");
        assert_eq!(names("lb1"), "read-config identity host-prep director done");
    }
}
