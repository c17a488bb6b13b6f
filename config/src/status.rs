//! `status.json` on PIHA-CFG: what the agent reached, so a failed node can be
//! diagnosed by pulling its card (`piha status TARGET`). Written by the agent,
//! read by the builder; one type for both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::Role;

/// The file name on PIHA-CFG.
pub const STATUS_FILE: &str = "status.json";
/// Key in `versions`: set when the init control plane joined a cluster that
/// already served instead of running `kubeadm init` (its card was replaced).
pub const INIT_FACT: &str = "init";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The agent is working through its steps (or was cut off while doing so).
    Running,
    /// A step failed and the agent tries it again at `retry.next_try`,
    /// without a reboot.
    Retrying,
    /// A step failed and the agent gave up (only with `piha-agent run
    /// --tries N`; by default it retries without limit), or the agent
    /// could not even load its state; the next boot retries it.
    Failed,
    /// node.yaml is missing or invalid; nothing was applied.
    InvalidConfig,
    /// Every step is done; later boots only re-apply identity.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Running,
    Ok,
    Failed,
    /// Already done on an earlier boot.
    Skipped,
}

impl Phase {
    /// The name status.json uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Retrying => "retrying",
            Phase::Failed => "failed",
            Phase::InvalidConfig => "invalid-config",
            Phase::Done => "done",
        }
    }
}

impl Outcome {
    /// The name status.json uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub outcome: Outcome,
    /// Unix seconds.
    pub started: u64,
    #[serde(default)]
    pub finished: Option<u64>,
    #[serde(default)]
    pub wall_ms: Option<u64>,
    #[serde(default)]
    pub cpu_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    /// Tail of the failing command's stderr.
    #[serde(default)]
    pub stderr_tail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub schema: u32,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
    pub phase: Phase,
    /// Unix seconds of the last write.
    pub updated: u64,
    /// How many times the agent has started on this card.
    pub boots: u32,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// piha-agent, kernel, kubeadm, runtime versions as found on the node.
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    /// The error that stopped the agent, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// What the running step waits for, when it waits (e.g. the clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// While phase is `retrying`: which try failed, when the next starts, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// A control plane's certificates, as `piha-agent certs` last found them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<Certificates>,
    /// Whether this node is a member of the cluster: kubeadm init or join
    /// succeeded (or, on a director, its role step finished). Recorded the
    /// moment kubeadm succeeds, not when the step ends.
    #[serde(default)]
    pub joined: bool,
}

/// kubeadm's certificates on a control plane (`piha-agent certs`, daily).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificates {
    /// Unix seconds of the check.
    pub checked: u64,
    /// The certificate that expires first (kubeadm's name, e.g. `apiserver`).
    pub first: String,
    /// When it expires (unix seconds).
    pub expires: u64,
    /// When they were last renewed (unix seconds), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed: Option<u64>,
}

/// A failed step that the agent tries again by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// The step that failed.
    pub step: String,
    /// How many tries of it have failed so far (1 after the first failure).
    pub attempt: u32,
    /// Unix seconds when the next try starts.
    pub next_try: u64,
    /// Why the last try failed.
    pub last_error: String,
}
