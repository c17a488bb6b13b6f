//! A power cut at any point of any step must resume and complete on the next
//! boot. This runs the real piha-agent binary on a
//! scratch node (commands logged, not run: `--dry-run-commands`) and, with
//! `PIHA_AGENT_CRASH_AT`, makes it abort — no cleanup, no final writes, like
//! losing power — at every point of every step: before the step, after each
//! of its commands, and after its work but before it is recorded. Then it
//! runs the agent again and checks the node ends up exactly as after an
//! uninterrupted run: the same files with the same modes and contents, the
//! same recorded state, status.json done, the secrets gone from the card.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod agent_support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

use agent_support::{Node, commands_per_step, files};
use serde_json::Value;

/// What must be identical after an interrupted and an uninterrupted run.
#[derive(Debug, PartialEq)]
struct Outcome {
    root: BTreeMap<String, (u32, String)>,
    card: BTreeMap<String, (u32, String)>,
    state: Value,
    steps: Vec<String>,
    versions: Value,
}

fn outcome(node: &Node) -> Outcome {
    let mut root = files(node.root.path());
    // The log differs by construction; the state is compared without its times below.
    root.remove("var/lib/piha/commands.log");
    root.remove("var/lib/piha/state.json");
    let mut card = files(node.card.path());
    card.remove("status.json");

    let mut state = node.state();
    state.as_object_mut().unwrap().remove("runs");
    for step in state["steps"].as_object_mut().unwrap().values_mut() {
        let done = step["done"].is_u64();
        step["done"] = Value::Bool(done);
    }

    let status = node.status();
    assert_eq!(status["phase"], "done", "{status:#}");
    assert_eq!(status["error"], Value::Null, "{status:#}");
    let steps = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let outcome = s["outcome"].as_str().unwrap();
            assert!(outcome == "ok" || outcome == "skipped", "{s:#}");
            s["name"].as_str().unwrap().to_string()
        })
        .collect();
    Outcome {
        root,
        card,
        state,
        steps,
        versions: status["versions"].clone(),
    }
}

/// Every crash point of an uninterrupted run, from its command log.
fn crash_points(reference: &Node) -> Vec<String> {
    let per_step = commands_per_step(&reference.command_log());
    let mut points = Vec::new();
    for step in reference.status()["steps"].as_array().unwrap() {
        let name = step["name"].as_str().unwrap();
        points.push(format!("{name}:before"));
        for n in 1..=per_step.get(name).map_or(0, Vec::len) {
            points.push(format!("{name}:after-command-{n}"));
        }
        points.push(format!("{name}:end"));
    }
    points
}

fn power_cut_everywhere(name: &str) {
    let reference = Node::new(name);
    let out = reference.run();
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    let want = outcome(&reference);
    assert!(!reference.card.path().join("secrets").exists());
    let points = crash_points(&reference);
    assert!(points.len() > 12, "{points:?}");

    let mut resets = 0;
    for point in &points {
        let node = Node::new(name);
        let crashed = node.agent(&["run"]).env("PIHA_AGENT_CRASH_AT", point).output().unwrap();
        assert_eq!(
            crashed.status.signal(),
            Some(6),
            "{name} at {point}: the agent must abort there: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        let before_rerun = node.command_log().lines().count();
        let crashed_state = std::fs::read_to_string(node.host("/var/lib/piha/state.json")).unwrap_or_default();

        let rerun = node.run();
        assert!(
            rerun.status.success(),
            "{name} after a cut at {point}: {}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        assert_eq!(outcome(&node), want, "{name}: a cut at {point} changed the end result");

        // A cut after kubeadm was started but before it was recorded as done
        // is recovered by resetting kubeadm first, then running it again.
        if interrupted_kubeadm(&crashed_state) {
            let log = node.command_log();
            let second: Vec<&str> = log.lines().skip(before_rerun).collect();
            let reset = second.iter().position(|l| *l == "kubeadm reset -f");
            let again = second
                .iter()
                .position(|l| l.starts_with("kubeadm init") || l.starts_with("kubeadm join"));
            assert!(
                reset.is_some() && reset < again,
                "{name} at {point}: expected a reset before re-running kubeadm: {second:#?}"
            );
            resets += 1;
        }
    }
    let kubeadm_role = name != "lb1";
    assert_eq!(resets > 0, kubeadm_role, "{name}: the cuts inside kubeadm were exercised");
}

/// True if the state saved before the cut says kubeadm started but did not finish.
fn interrupted_kubeadm(state_json: &str) -> bool {
    let Ok(state) = serde_json::from_str::<Value>(state_json) else {
        return false;
    };
    state["steps"].as_object().is_some_and(|steps| {
        steps.values().any(|s| {
            let marks: Vec<&str> = s["marks"]
                .as_array()
                .map(|m| m.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            marks.contains(&"kubeadm-started") && !marks.contains(&"kubeadm-done")
        })
    })
}

#[test]
fn init_control_plane_survives_a_power_cut_anywhere() {
    power_cut_everywhere("cp1");
}

#[test]
fn joining_control_plane_survives_a_power_cut_anywhere() {
    power_cut_everywhere("cp2");
}

#[test]
fn worker_survives_a_power_cut_anywhere() {
    power_cut_everywhere("w1");
}

#[test]
fn director_survives_a_power_cut_anywhere() {
    power_cut_everywhere("lb1");
}
