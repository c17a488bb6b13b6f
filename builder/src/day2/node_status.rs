//! One row per node: reachable or not, the agent's phase, step, attempt,
//! last error, joined or not. `piha status --cluster`, `piha lab status` and
//! `piha lab up` print the same rows, from SSH or from a VM's disk.

use piha_config::status::{Phase, Status};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    pub ip: String,
    /// Lab only: `running` or `stopped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<&'static str>,
    /// Whether the node answered over SSH just now; `None` when it was not
    /// asked (a lab row read from the VM's disk while it boots).
    pub reachable: Option<bool>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    /// The agent's phase (`running`, `retrying`, `failed`, `invalid-config`,
    /// `done`), `none` before its first report, `unknown` when not read.
    pub phase: String,
    /// The latest step and its outcome, e.g. `join-worker running`.
    pub step: String,
    /// While retrying: the failed tries of the step so far, and when the next starts (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_try: Option<u64>,
    /// The last error (of the try that failed, while retrying).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub joined: bool,
    pub boots: u32,
    /// When the agent last wrote its status (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
    /// A control plane's first certificate to expire, and when (unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<(String, u64)>,
}

/// Who a row is about.
#[derive(Debug, Clone)]
pub struct Who {
    pub name: String,
    pub role: String,
    pub ip: String,
}

impl NodeStatus {
    /// A row from what was read: `Ok(Some)` a status.json, `Ok(None)` none yet,
    /// `Err` why it could not be read.
    pub fn new(who: &Who, read: Result<Option<Status>, String>, reachable: Option<bool>) -> NodeStatus {
        let mut row = NodeStatus {
            name: who.name.clone(),
            role: who.role.clone(),
            ip: who.ip.clone(),
            vm: None,
            reachable,
            unreachable: None,
            phase: "none".to_string(),
            step: String::new(),
            attempt: None,
            next_try: None,
            error: None,
            joined: false,
            boots: 0,
            updated: None,
            certificate_expires: None,
        };
        match read {
            Ok(Some(s)) => {
                row.phase = s.phase.as_str().to_string();
                row.step = s
                    .steps
                    .last()
                    .map(|st| format!("{} {}", st.name, st.outcome.as_str()))
                    .unwrap_or_default();
                row.joined = s.joined;
                row.boots = s.boots;
                row.updated = Some(s.updated);
                row.certificate_expires = s.certificates.as_ref().map(|c| (c.first.clone(), c.expires));
                match (&s.retry, s.phase) {
                    (Some(r), _) => {
                        row.attempt = Some(r.attempt);
                        row.next_try = Some(r.next_try);
                        row.error = Some(r.last_error.clone());
                    }
                    (None, Phase::Done) => {}
                    (None, _) => row.error = s.error.clone(),
                }
            }
            Ok(None) => {}
            Err(e) if reachable != Some(false) => {
                row.phase = "unknown".to_string();
                row.error = Some(e);
            }
            Err(e) => {
                row.phase = "unknown".to_string();
                row.unreachable = Some(e);
            }
        }
        row
    }

    /// The agent has finished, one way or the other (not `retrying`: it
    /// carries on by itself).
    pub fn settled(&self) -> bool {
        matches!(self.phase.as_str(), "done" | "failed" | "invalid-config")
    }
}

/// The table as every status command prints it.
pub fn table(rows: &[NodeStatus]) -> String {
    let lab = rows.iter().any(|r| r.vm.is_some());
    let mut out = String::new();
    let head = |vm: &str| {
        format!(
            "{:<12} {:<14} {:<15} {vm}{:<11} {:<15} {:<6} {:>5}  {}\n",
            "NODE", "ROLE", "IP", "SSH", "AGENT", "JOINED", "BOOTS", "STEP"
        )
    };
    out.push_str(&head(if lab { "VM       " } else { "" }));
    for r in rows {
        let vm = match r.vm {
            Some(v) => format!("{v:<8} "),
            None => String::new(),
        };
        let ssh = match r.reachable {
            Some(true) => "ok",
            Some(false) => "unreachable",
            None => "-",
        };
        let mut step = r.step.clone();
        if let (Some(a), Some(next)) = (r.attempt, r.next_try) {
            step.push_str(&format!(" (try {a} failed; next {})", when(next)));
        }
        out.push_str(&format!(
            "{:<12} {:<14} {:<15} {vm}{:<11} {:<15} {:<6} {:>5}  {}\n",
            r.name,
            r.role,
            r.ip,
            ssh,
            r.phase,
            if r.joined { "yes" } else { "no" },
            r.boots,
            step
        ));
        if let Some(u) = &r.unreachable {
            out.push_str(&format!("{:<12} unreachable: {u}\n", ""));
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("{:<12} error: {e}\n", ""));
        }
        if let Some((first, at)) = &r.certificate_expires {
            out.push_str(&format!("{:<12} certificates: {first} expires first, on {}\n", "", when(*at)));
        }
    }
    out
}

/// Unix seconds as `2025-01-31 12:00:00 UTC`.
pub fn when(unix: u64) -> String {
    match i64::try_from(unix)
        .ok()
        .and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok())
    {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => format!("@{unix}"),
    }
}
