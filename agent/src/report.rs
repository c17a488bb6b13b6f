//! `status.json` on PIHA-CFG: rewritten (atomically, temp + rename on the
//! FAT) at every step's start and end, so a card pulled from a node at any
//! moment tells what the agent reached, how long each step took, and why it
//! stopped. `piha status` on the workstation reads it.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use piha_config::node::NodeConfig;
use piha_config::status::{Outcome, Phase, Retry, Status, StepRecord};
use piha_runner::RunError;

use crate::cpu;
use crate::paths::Paths;
use piha_atomic as atomic;

/// The status.json format version this agent writes.
/// 2: phase `retrying`, `retry` and `joined`.
pub const STATUS_SCHEMA: u32 = 2;

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The step being timed.
struct Running {
    index: usize,
    wall: Instant,
    cpu_ms: Option<u64>,
}

pub struct Reporter {
    path: PathBuf,
    pub status: Status,
    running: Option<Running>,
}

impl Reporter {
    /// A report for this run. The boot count continues from the card's
    /// previous status.json, so it counts boots of this card.
    pub fn start(paths: &Paths) -> Reporter {
        let path = paths.status_file();
        let previous = read(&path);
        let boots = previous.as_ref().map_or(0, |s| s.boots).saturating_add(1);
        let mut status = Status {
            schema: STATUS_SCHEMA,
            node: None,
            role: None,
            phase: Phase::Running,
            updated: now(),
            boots,
            steps: Vec::new(),
            versions: Default::default(),
            error: None,
            waiting: None,
            retry: None,
            joined: false,
            // The daily certificate check's last finding stays until it runs again.
            certificates: previous.as_ref().and_then(|s| s.certificates.clone()),
        };
        status.versions.insert("piha-agent".into(), env!("CARGO_PKG_VERSION").into());
        if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
            status.versions.insert("kernel".into(), kernel.trim().to_string());
        }
        Reporter {
            path,
            status,
            running: None,
        }
    }

    pub fn set_node(&mut self, cfg: &NodeConfig) {
        self.status.node = Some(cfg.node.name.clone());
        self.status.role = Some(cfg.node.role);
    }

    pub fn set_version(&mut self, what: &str, version: String) {
        self.status.versions.insert(what.to_string(), version);
    }

    /// A step starts: recorded as running and written out.
    pub fn begin(&mut self, name: &str) {
        self.status.steps.push(StepRecord {
            name: name.to_string(),
            outcome: Outcome::Running,
            started: now(),
            finished: None,
            wall_ms: None,
            cpu_ms: None,
            error: None,
            stderr_tail: None,
        });
        self.status.waiting = None;
        self.status.error = None;
        self.running = Some(Running {
            index: self.status.steps.len() - 1,
            wall: Instant::now(),
            cpu_ms: cpu::used_ms(),
        });
        self.status.phase = Phase::Running;
        self.write();
    }

    fn finish(&mut self, outcome: Outcome) -> Option<&mut StepRecord> {
        self.status.waiting = None;
        let running = self.running.take()?;
        let cpu_now = cpu::used_ms();
        let step = self.status.steps.get_mut(running.index)?;
        step.outcome = outcome;
        step.finished = Some(now());
        step.wall_ms = Some(u64::try_from(running.wall.elapsed().as_millis()).unwrap_or(u64::MAX));
        step.cpu_ms = match (running.cpu_ms, cpu_now) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        Some(step)
    }

    /// What the running step waits for (`None`: nothing any more), written out.
    pub fn waiting(&mut self, what: Option<String>) {
        self.status.waiting = what;
        self.write();
    }

    pub fn finish_ok(&mut self) {
        self.finish(Outcome::Ok);
        self.status.retry = None;
        self.write();
    }

    /// Whether the node is a member of the cluster (state.json's `joined`).
    pub fn set_joined(&mut self, joined: bool) {
        self.status.joined = joined;
    }

    /// The running step failed: its record gets the error chain and the
    /// failing command's stderr tail; the phase becomes `failed`.
    pub fn finish_failed(&mut self, err: &anyhow::Error) {
        let message = self.record_failure(err);
        self.status.phase = Phase::Failed;
        self.status.retry = None;
        self.status.error = Some(message);
        self.write();
    }

    /// The running step failed and is tried again at `next_try` (unix
    /// seconds): the phase becomes `retrying`, with the attempt and the error.
    pub fn finish_retrying(&mut self, step: &str, err: &anyhow::Error, attempt: u32, next_try: u64) {
        let message = self.record_failure(err);
        self.status.phase = Phase::Retrying;
        self.status.retry = Some(Retry {
            step: step.to_string(),
            attempt,
            next_try,
            last_error: message.clone(),
        });
        self.status.error = Some(message);
        self.write();
    }

    /// The running step failed: its record gets the error and stderr tail.
    /// Earlier failed records of the same step in this run are dropped, so a
    /// node that retries for days keeps one record per step, the latest failure.
    fn record_failure(&mut self, err: &anyhow::Error) -> String {
        let message = format!("{err:#}");
        let stderr_tail = stderr_tail(err);
        let Some(step) = self.finish(Outcome::Failed) else {
            return message;
        };
        step.error = Some(message.clone());
        step.stderr_tail = stderr_tail;
        let name = step.name.clone();
        let last = self.status.steps.len() - 1;
        let mut i = 0;
        self.status.steps.retain(|st| {
            let keep = i == last || st.name != name || st.outcome != Outcome::Failed;
            i += 1;
            keep
        });
        message
    }

    /// A step done on an earlier boot.
    pub fn skipped(&mut self, name: &str) {
        let t = now();
        self.status.steps.push(StepRecord {
            name: name.to_string(),
            outcome: Outcome::Skipped,
            started: t,
            finished: Some(t),
            wall_ms: Some(0),
            cpu_ms: Some(0),
            error: None,
            stderr_tail: None,
        });
    }

    /// node.yaml is missing or invalid: nothing was applied.
    pub fn invalid_config(&mut self, message: String) {
        if let Some(step) = self.finish(Outcome::Failed) {
            step.error = Some(message.clone());
        }
        self.status.phase = Phase::InvalidConfig;
        self.status.error = Some(message);
        self.write();
    }

    pub fn done(&mut self) {
        self.status.phase = Phase::Done;
        self.status.error = None;
        self.status.retry = None;
        self.write();
    }

    /// Writes status.json. A card that cannot be written must not stop the
    /// node from being set up, so a failure is logged, not returned.
    pub fn write(&mut self) {
        self.status.updated = now();
        // `piha-agent certs` may have written a newer certificate check into
        // the card's file since this run started: keep it.
        if let Some(on_card) = read(&self.path).and_then(|s| s.certificates) {
            if self.status.certificates.as_ref().is_none_or(|c| on_card.checked > c.checked) {
                self.status.certificates = Some(on_card);
            }
        }
        let mut text = match serde_json::to_string_pretty(&self.status) {
            Ok(t) => t,
            Err(e) => {
                log::error!("serializing status: {e}");
                return;
            }
        };
        text.push('\n');
        // No permissions: the FAT has none (the mount's umask keeps it root-only).
        if let Err(e) = atomic::write(&self.path, text.as_bytes(), None) {
            log::error!("cannot write {}: {e}", self.path.display());
        }
    }
}

/// The card's status.json, if it reads.
fn read(path: &std::path::Path) -> Option<Status> {
    std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok())
}

/// The stderr tail of the failing command anywhere in the error chain.
pub fn stderr_tail(err: &anyhow::Error) -> Option<String> {
    err.chain()
        .find_map(|e| e.downcast_ref::<RunError>())
        .and_then(RunError::stderr_tail)
        .map(str::to_string)
}
