//! `piha status TARGET`: what the agent wrote to `status.json` on a card, an
//! image, or a bare PIHA-CFG filesystem image, read without mounting.
//! `piha status --cluster FILE [--watch]`: every node's, over SSH (`day2::remote`).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use piha_config::node::{CONFIG_LABEL, NODE_FILE, NodeConfig};
use piha_config::status::{STATUS_FILE, Status, StepRecord};

use crate::card::report;
use crate::cli::StatusOpts;
use crate::day2::node_status::{self, Who, when};
use crate::day2::remote::{self, UserSsh};
use crate::inputs::cluster;
use piha_runner::SystemRunner;

/// Said when the card has no status.json.
pub const NOT_BOOTED: &str = "no status.json: the node has not booted with this card yet";

pub fn run(opts: &StatusOpts) -> anyhow::Result<()> {
    match (&opts.target, &opts.cluster) {
        (_, Some(cluster)) => run_cluster(opts, cluster),
        (Some(target), None) => run_target(opts, target),
        (None, None) => bail!("give a card or image (`piha status /dev/sdX`) or a cluster (`piha status --cluster cluster.yaml`)"),
    }
}

/// How long `--watch` waits between refreshes.
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// `--cluster`: every node over SSH, once or (`--watch`) until interrupted.
fn run_cluster(opts: &StatusOpts, cluster_path: &Path) -> anyhow::Result<()> {
    let cluster = cluster::load_cluster(cluster_path)?;
    let nodes: Vec<(Who, std::net::Ipv4Addr)> = cluster
        .nodes
        .iter()
        .map(|n| {
            (
                Who {
                    name: n.name.clone(),
                    role: n.role.as_str().to_string(),
                    ip: n.ip.to_string(),
                },
                n.ip,
            )
        })
        .collect();
    let ssh = UserSsh {
        user: opts.user.clone(),
        connect_timeout: 10,
    };
    loop {
        let rows = remote::fetch_all(&SystemRunner, &ssh, &nodes);
        if opts.json {
            // One array per refresh, on one line when watching (JSON lines).
            if opts.watch {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
        } else {
            if opts.watch && std::io::stdout().is_terminal() {
                // Clear the screen and go home, like watch(1).
                print!("\x1b[2J\x1b[H");
            }
            println!("cluster {} ({}), {}", cluster.name, cluster_path.display(), when(now()));
            print!("{}", node_status::table(&rows));
        }
        std::io::stdout().flush()?;
        if !opts.watch {
            return Ok(());
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn run_target(opts: &StatusOpts, target: &Path) -> anyhow::Result<()> {
    let report = report::read(target)?;
    let (status_raw, node_raw) = (report.status, report.node_yaml);
    let Some(raw) = status_raw else {
        if opts.json {
            // Keep stdout pure JSON for scripts: absence is an error there.
            bail!("{}: {NOT_BOOTED}", target.display());
        }
        println!("{}: {NOT_BOOTED}", target.display());
        if let Some(n) = node_raw.as_deref().and_then(|t| stamped_for(target, t)) {
            println!("card stamped for {n}");
        }
        return Ok(());
    };
    if opts.json {
        let text = String::from_utf8_lossy(&raw);
        println!("{}", text.trim_end());
        return Ok(());
    }
    let status: Status = serde_json::from_slice(&raw).with_context(|| {
        format!(
            "{}: {STATUS_FILE} on {CONFIG_LABEL} is not valid (use --json to see it raw)",
            target.display()
        )
    })?;
    print!(
        "{}",
        summary(&status, node_raw.as_deref().and_then(|t| stamped_for(target, t)).as_deref())
    );
    Ok(())
}

fn stamped_for(target: &Path, node_yaml: &str) -> Option<String> {
    let cfg = NodeConfig::parse(&target.join(NODE_FILE), node_yaml).ok()?;
    Some(format!(
        "{} ({}) of cluster {}",
        cfg.node.name,
        cfg.node.role.as_str(),
        cfg.cluster.name
    ))
}

/// The human summary: who, which phase, then one line per step with the
/// error and stderr tail of any that failed.
pub fn summary(s: &Status, stamped: Option<&str>) -> String {
    let mut out = String::new();
    let node = s.node.as_deref().unwrap_or("(unknown node)");
    let role = s.role.map(|r| r.as_str()).unwrap_or("unknown role");
    out.push_str(&format!(
        "node {node} ({role}): phase {}, {}, boot {}, updated {}\n",
        s.phase.as_str(),
        if s.joined { "joined" } else { "not joined" },
        s.boots,
        when(s.updated)
    ));
    if let Some(card) = stamped {
        if !card.starts_with(&format!("{node} ")) {
            out.push_str(&format!(
                "note: the card is now stamped for {card}; this status is from before the re-stamp\n"
            ));
        }
    }
    if let Some(w) = &s.waiting {
        out.push_str(&format!("waiting for {w}\n"));
    }
    if let Some(r) = &s.retry {
        out.push_str(&format!(
            "retrying {}: try {} failed, next try at {}\n  last error: {}\n",
            r.step,
            r.attempt,
            when(r.next_try),
            r.last_error
        ));
    }
    if let (Some(e), None) = (&s.error, &s.retry) {
        out.push_str(&format!("error: {e}\n"));
    }
    if let Some(c) = &s.certificates {
        let renewed = c.renewed.map(|t| format!("; renewed {}", when(t))).unwrap_or_default();
        out.push_str(&format!(
            "certificates: {} expires first, on {} (checked {}{renewed})\n",
            c.first,
            when(c.expires),
            when(c.checked)
        ));
    }
    let width = s.steps.iter().map(|st| st.name.len()).max().unwrap_or(0);
    for st in &s.steps {
        out.push_str(&step_line(st, width));
    }
    if !s.versions.is_empty() {
        let v: Vec<String> = s.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push_str(&format!("versions: {}\n", v.join(", ")));
    }
    out
}

fn step_line(st: &StepRecord, width: usize) -> String {
    let mut line = format!("  {:<width$}  {:<8} {}", st.name, st.outcome.as_str(), when(st.started));
    if let Some(ms) = st.wall_ms {
        line.push_str(&format!("  {:.1} s", ms as f64 / 1000.0));
    }
    line.push('\n');
    if let Some(e) = &st.error {
        line.push_str(&format!("      error: {e}\n"));
    }
    if let Some(tail) = st.stderr_tail.as_deref().filter(|t| !t.trim().is_empty()) {
        line.push_str("      stderr:\n");
        for l in tail.lines() {
            line.push_str(&format!("        | {l}\n"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use piha_config::cluster::Role;
    use piha_config::status::{Outcome, Phase, Status, StepRecord};

    use super::summary;
    use crate::day2::node_status::when;

    #[test]
    fn failed_step_shows_error_and_stderr() {
        let s = Status {
            schema: 1,
            node: Some("cp2".into()),
            role: Some(Role::ControlPlane),
            phase: Phase::Failed,
            updated: 1_700_000_100,
            boots: 2,
            steps: vec![
                StepRecord {
                    name: "identity".into(),
                    outcome: Outcome::Ok,
                    started: 1_700_000_000,
                    finished: Some(1_700_000_001),
                    wall_ms: Some(1200),
                    cpu_ms: None,
                    error: None,
                    stderr_tail: None,
                },
                StepRecord {
                    name: "join".into(),
                    outcome: Outcome::Failed,
                    started: 1_700_000_050,
                    finished: None,
                    wall_ms: None,
                    cpu_ms: None,
                    error: Some("kubeadm join failed".into()),
                    stderr_tail: Some("line one\nconnection refused".into()),
                },
            ],
            versions: BTreeMap::from([("piha-agent".to_string(), "0.1.0".to_string())]),
            error: Some("step join failed".into()),
            waiting: None,
            retry: None,
            joined: false,
            certificates: None,
        };
        let text = summary(&s, Some("cp2 (control-plane) of cluster qemu-lab"));
        assert!(
            text.starts_with("node cp2 (control-plane): phase failed, not joined, boot 2, updated 2023-11-14 22:15:00 UTC\n"),
            "{text}"
        );
        assert!(text.contains("error: step join failed"), "{text}");
        assert!(text.contains("  identity  ok       2023-11-14 22:13:20 UTC  1.2 s"), "{text}");
        assert!(
            text.contains("      error: kubeadm join failed\n      stderr:\n        | line one\n        | connection refused\n"),
            "{text}"
        );
        assert!(text.contains("versions: piha-agent 0.1.0"), "{text}");
        assert!(!text.contains("re-stamp"), "{text}");
        assert!(summary(&s, Some("w1 (worker) of cluster qemu-lab")).contains("now stamped for w1"));
    }

    #[test]
    fn a_step_being_retried_shows_its_attempt_next_try_and_last_error() {
        let s = Status {
            schema: 2,
            node: Some("w1".into()),
            role: Some(Role::Worker),
            phase: Phase::Retrying,
            updated: 1_700_000_100,
            boots: 1,
            steps: Vec::new(),
            versions: BTreeMap::new(),
            error: Some("the cluster's API at 10.0.2.100:6443 did not answer".into()),
            waiting: None,
            retry: Some(piha_config::status::Retry {
                step: "join-worker".into(),
                attempt: 3,
                next_try: 1_700_000_160,
                last_error: "the cluster's API at 10.0.2.100:6443 did not answer".into(),
            }),
            joined: false,
            certificates: Some(piha_config::status::Certificates {
                checked: 1_700_000_000,
                first: "apiserver".into(),
                expires: 1_731_456_000,
                renewed: None,
            }),
        };
        let text = summary(&s, None);
        assert!(
            text.contains("certificates: apiserver expires first, on 2024-11-13 00:00:00 UTC (checked 2023-11-14 22:13:20 UTC)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "retrying join-worker: try 3 failed, next try at 2023-11-14 22:16:00 UTC\n  last error: the cluster's API at 10.0.2.100:6443 did not answer\n"
            ),
            "{text}"
        );
        assert!(!text.contains("\nerror:"), "said once: {text}");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
    }
}
