//! `/var/lib/piha/state.json`: which steps are done, what the node is, and
//! the progress marks inside a step that must survive a power cut (e.g. "kubeadm
//! was started"). Saved atomically after every change, so the file always
//! describes a state the agent really reached.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::Ipv4Net;
use piha_config::cluster::Role;
use piha_config::node::NodeConfig;
use serde::{Deserialize, Serialize};

use piha_atomic::{self as atomic, Perm};

/// Bumped when an older agent would misread the file.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub schema: u32,
    /// How many times the agent has run past read-config on this root.
    pub runs: u32,
    /// The identity the last identity step applied.
    #[serde(default)]
    pub identity: Option<NodeIdentity>,
    /// The identity under which this node ran kubeadm (or became a director).
    /// Once set, a card stamped for another node is refused: see `steps::identity`.
    #[serde(default)]
    pub joined: Option<NodeIdentity>,
    #[serde(default)]
    pub steps: BTreeMap<String, StepState>,
    /// What a finished step found that later reports should still show
    /// (e.g. which CNI manifest was applied); merged into status.json's versions.
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            schema: SCHEMA,
            runs: 0,
            identity: None,
            joined: None,
            steps: BTreeMap::new(),
            facts: BTreeMap::new(),
        }
    }
}

/// The state and where it is saved: every change a step records is saved at
/// once, so a power cut right after it cannot lose it.
#[derive(Debug)]
pub struct Store {
    pub path: PathBuf,
    pub state: State,
}

impl Store {
    pub fn load(path: PathBuf) -> anyhow::Result<Store> {
        let state = State::load(&path)?;
        Ok(Store { path, state })
    }

    pub fn save(&self) -> anyhow::Result<()> {
        self.state.save(&self.path)
    }

    pub fn has_mark(&self, step: &str, mark: &str) -> bool {
        self.state.has_mark(step, mark)
    }

    /// Records a progress mark and saves.
    pub fn mark(&mut self, step: &str, mark: &str) -> anyhow::Result<()> {
        self.state.add_mark(step, mark);
        self.save()
    }
}

/// What makes a node that node in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    pub cluster: String,
    pub name: String,
    pub address: Ipv4Net,
    pub role: Role,
    /// The control plane that ran `kubeadm init`.
    #[serde(default)]
    pub init: bool,
}

impl NodeIdentity {
    pub fn of(cfg: &NodeConfig) -> NodeIdentity {
        NodeIdentity {
            cluster: cfg.cluster.name.clone(),
            name: cfg.node.name.clone(),
            address: cfg.node.address,
            role: cfg.node.role,
            init: cfg.node.init,
        }
    }

    /// `cp1 (10.0.2.11/24, control-plane, cluster qemu-lab)`.
    pub fn describe(&self) -> String {
        let init = if self.init { " init" } else { "" };
        format!(
            "{} ({}, {}{init}, cluster {})",
            self.name,
            self.address,
            self.role.as_str(),
            self.cluster
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepState {
    /// Unix seconds when the step finished; `None` while it is not done.
    #[serde(default)]
    pub done: Option<u64>,
    /// Progress inside the step (`kubeadm-started`, `kubeadm-done`).
    #[serde(default)]
    pub marks: BTreeSet<String>,
}

impl State {
    /// Reads the state; a missing file is a fresh node. An unreadable file is
    /// an error rather than a fresh start: starting over on a joined node would
    /// reset kubeadm on it.
    pub fn load(path: &Path) -> anyhow::Result<State> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: State = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a piha-agent state file (fix: inspect it, then `piha-agent reset` to start over; \
                 that re-runs every step, including `kubeadm reset`)",
                path.display()
            )
        })?;
        if state.schema == 0 {
            anyhow::bail!(
                "{}: schema 0 was never written by a piha-agent (fix: inspect it, then `piha-agent reset` to start over)",
                path.display()
            );
        }
        if state.schema > SCHEMA {
            anyhow::bail!(
                "{}: schema {} is newer than this agent understands ({SCHEMA}) (fix: boot the image that wrote it, or `piha-agent reset`)",
                path.display(),
                state.schema
            );
        }
        Ok(state)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        atomic::create_dirs(dir, Perm::root(0o755)).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = serde_json::to_string_pretty(self).context("serializing the state")?;
        text.push('\n');
        atomic::write(path, text.as_bytes(), Some(Perm::root(0o644))).with_context(|| format!("writing {}", path.display()))
    }

    pub fn is_done(&self, step: &str) -> bool {
        self.steps.get(step).is_some_and(|s| s.done.is_some())
    }

    pub fn set_done(&mut self, step: &str, now: u64) {
        self.steps.entry(step.to_string()).or_default().done = Some(now);
    }

    pub fn has_mark(&self, step: &str, mark: &str) -> bool {
        self.steps.get(step).is_some_and(|s| s.marks.contains(mark))
    }

    pub fn add_mark(&mut self, step: &str, mark: &str) {
        self.steps.entry(step.to_string()).or_default().marks.insert(mark.to_string());
    }

    /// Forgets a step entirely (done time and marks), so it runs again.
    pub fn forget(&mut self, step: &str) {
        self.steps.remove(step);
    }

    /// The names of the finished steps, in file order.
    pub fn done_steps(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|(_, s)| s.done.is_some())
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn round_trips_and_missing_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/piha/state.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        let mut s = State {
            runs: 2,
            ..State::default()
        };
        s.set_done("host-prep", 7);
        s.add_mark("join-worker", "kubeadm-started");
        s.save(&path).unwrap();
        let back = State::load(&path).unwrap();
        assert_eq!(back, s);
        assert!(back.is_done("host-prep"));
        assert!(!back.is_done("join-worker"));
        assert!(back.has_mark("join-worker", "kubeadm-started"));
    }

    #[test]
    fn garbage_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = format!("{:#}", State::load(&path).unwrap_err());
        assert!(err.contains("piha-agent reset"), "{err}");
    }

    /// Schema 0 (never written) and a schema from a newer agent are refused,
    /// not read as a state with every step to do.
    #[test]
    fn a_schema_this_agent_never_wrote_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        for (schema, says) in [(0, "schema 0 was never written"), (super::SCHEMA + 1, "is newer than this agent")] {
            std::fs::write(&path, format!("{{\"schema\": {schema}, \"runs\": 1}}")).unwrap();
            let err = format!("{:#}", State::load(&path).unwrap_err());
            assert!(err.contains(says) && err.contains("piha-agent reset"), "{err}");
        }
    }
}
