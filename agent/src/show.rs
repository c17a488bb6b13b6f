//! `piha-agent status`: the recorded state (/var/lib/piha/state.json) and
//! the card's status.json, for a person logged in on the node.

use std::fmt::Write as _;

use anyhow::Context;
use piha_config::status::Status;

use crate::cli::StatusOpts;
use crate::paths::Paths;
use crate::state::State;

pub fn run(opts: &StatusOpts) -> anyhow::Result<()> {
    let paths = Paths::new(&opts.paths.root, &opts.paths.config_dir);
    let state_path = paths.state_file();
    let state = State::load(&state_path)?;
    let status_path = paths.status_file();
    let status: Option<Status> = match std::fs::read_to_string(&status_path) {
        Ok(text) => Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", status_path.display()))?),
        Err(_) => None,
    };
    if opts.json {
        let both = serde_json::json!({ "state": state, "status": status });
        println!("{}", serde_json::to_string_pretty(&both).context("serializing")?);
        return Ok(());
    }
    print!(
        "{}",
        render(
            &state,
            &state_path.display().to_string(),
            status.as_ref(),
            &status_path.display().to_string()
        )
    );
    Ok(())
}

/// The human-readable report.
pub fn render(state: &State, state_path: &str, status: Option<&Status>, status_path: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "state ({state_path}): {} run(s)", state.runs);
    match &state.identity {
        Some(id) => {
            let _ = writeln!(out, "  identity: {}", id.describe());
        }
        None => {
            let _ = writeln!(out, "  identity: not applied yet");
        }
    }
    if let Some(joined) = &state.joined {
        let _ = writeln!(out, "  joined as: {}", joined.describe());
    }
    for (name, step) in &state.steps {
        let done = step.done.map_or("not done".to_string(), |t| format!("done at unix {t}"));
        let marks = if step.marks.is_empty() {
            String::new()
        } else {
            format!(" [{}]", step.marks.iter().cloned().collect::<Vec<_>>().join(", "))
        };
        let _ = writeln!(out, "  {name:<20} {done}{marks}");
    }
    for (what, fact) in &state.facts {
        let _ = writeln!(out, "  {what}: {fact}");
    }
    match status {
        None => {
            let _ = writeln!(out, "status ({status_path}): not readable (is PIHA-CFG mounted?)");
        }
        Some(s) => {
            let phase = serde_json::to_value(s.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "status ({status_path}): {phase}, boot {}, updated at unix {}",
                s.boots, s.updated
            );
            for step in &s.steps {
                let outcome = serde_json::to_value(step.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let wall = step.wall_ms.map_or("-".to_string(), |ms| format!("{ms} ms"));
                let cpu = step.cpu_ms.map_or("-".to_string(), |ms| format!("{ms} ms cpu"));
                let _ = writeln!(out, "  {:<20} {outcome:<8} {wall:>10} {cpu:>14}", step.name);
                if let Some(e) = &step.error {
                    let _ = writeln!(out, "    error: {e}");
                }
                if let Some(t) = &step.stderr_tail {
                    let _ = writeln!(out, "    stderr: {}", t.replace('\n', "\n            "));
                }
            }
            for (what, version) in &s.versions {
                let _ = writeln!(out, "  {what}: {version}");
            }
        }
    }
    out
}
