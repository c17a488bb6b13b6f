//! Each node's VM state and agent phase, live. The phase comes from the same
//! place as `piha status TARGET`: the agent's status.json on the PIHA-CFG
//! partition, read from the VM's disk without mounting (the guest mounts it
//! with `flush`, so what the agent reports reaches the disk at once). A read
//! that races a write of the guest is retried once, then shown as unknown.

use std::time::Duration;

use piha_config::status::Status;
use serde::Serialize;

use super::dir::LabDir;
use super::state::{LabState, NodeState};
use super::vm;
use crate::card::report;

#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub role: String,
    pub ip: String,
    /// `running` or `stopped`.
    pub vm: &'static str,
    /// The agent's phase (`running`, `failed`, `invalid-config`, `done`), or
    /// `none` before its first report.
    pub phase: String,
    /// The latest step and its outcome, e.g. `join-control-plane running`.
    pub step: String,
    pub boots: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeRow {
    /// The agent has finished, one way or the other.
    pub fn settled(&self) -> bool {
        matches!(self.phase.as_str(), "done" | "failed" | "invalid-config")
    }
}

pub fn rows(dir: &LabDir, state: &LabState) -> Vec<NodeRow> {
    state.nodes.iter().map(|n| row(dir, n)).collect()
}

pub fn row(dir: &LabDir, n: &NodeState) -> NodeRow {
    let status = read_status(dir, &n.name);
    let (phase, step, boots, error) = match &status {
        Ok(Some(s)) => (s.phase.as_str().to_string(), last_step(s), s.boots, s.error.clone()),
        Ok(None) => ("none".to_string(), String::new(), 0, None),
        Err(e) => ("unknown".to_string(), String::new(), 0, Some(e.clone())),
    };
    NodeRow {
        name: n.name.clone(),
        role: n.role.as_str().to_string(),
        ip: n.ip.to_string(),
        vm: if vm::running(dir, &n.name) { "running" } else { "stopped" },
        phase,
        step,
        boots,
        error,
    }
}

fn read_status(dir: &LabDir, name: &str) -> Result<Option<Status>, String> {
    let disk = dir.disk(name);
    let once = || report::read(&disk).and_then(|r| r.parsed(&disk)).map_err(|e| format!("{e:#}"));
    once().or_else(|_| {
        std::thread::sleep(Duration::from_millis(300));
        once()
    })
}

fn last_step(s: &Status) -> String {
    s.steps
        .last()
        .map(|st| format!("{} {}", st.name, st.outcome.as_str()))
        .unwrap_or_default()
}

/// The node table as `up` and `status` print it.
pub fn table(rows: &[NodeRow]) -> String {
    let mut out = format!(
        "{:<12} {:<14} {:<15} {:<8} {:<15} {:>5}  {}\n",
        "NODE", "ROLE", "IP", "VM", "AGENT", "BOOTS", "STEP"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<12} {:<14} {:<15} {:<8} {:<15} {:>5}  {}\n",
            r.name, r.role, r.ip, r.vm, r.phase, r.boots, r.step
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("{:<12} error: {e}\n", ""));
        }
    }
    out
}
