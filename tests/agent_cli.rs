//! The real piha-agent binary on a scratch node (commands logged, not run):
//! exit codes, status.json, `piha-agent status` and `piha-agent reset`.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod agent_support;

use agent_support::{Node, files, node_config};
use piha_config::secrets::for_role;

#[test]
fn an_invalid_node_yaml_exits_2_reports_and_touches_nothing() {
    let node = Node::new("cp1");
    // Wrong, but sealed: a careless stamper, not a torn card.
    let text = std::fs::read_to_string(node.card.path().join("node.yaml")).unwrap();
    let body = piha_config::node::unsealed(&text).replace("role: control-plane", "role: conductor");
    std::fs::write(node.card.path().join("node.yaml"), piha_config::node::seal(&body)).unwrap();
    let before = files(node.root.path());
    let out = node.run();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the card is not usable; nothing was applied"), "{stderr}");
    let status = node.status();
    assert_eq!(status["phase"], "invalid-config");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("node.yaml") && error.contains("conductor"), "{error}");
    assert_eq!(files(node.root.path()), before, "nothing on the node may change, not even a log");
    // The card it refused keeps no secrets: a card thrown away now gives nothing away.
    assert!(!node.card.path().join("secrets").exists());
    assert!(error.contains("secrets were overwritten and removed"), "{error}");
}

#[test]
fn a_failing_command_fails_the_step_and_the_next_boot_retries_it() {
    let node = Node::new("w1");
    node.write(
        "/var/lib/piha/dry-run/swapoff.fail",
        "swapoff: /swapfile: swapoff failed: Cannot allocate memory\n",
    );
    let out = node.run();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let status = node.status();
    assert_eq!(status["phase"], "failed");
    let last = status["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["name"], "host-prep");
    assert_eq!(last["outcome"], "failed");
    assert!(last["stderr_tail"].as_str().unwrap().contains("Cannot allocate memory"), "{last:#}");
    assert!(last["wall_ms"].is_u64() && last["cpu_ms"].is_u64(), "{last:#}");

    std::fs::remove_file(node.host("/var/lib/piha/dry-run/swapoff.fail")).unwrap();
    let out = node.run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = node.status();
    assert_eq!(status["phase"], "done");
    assert_eq!(status["boots"], 2);
    let outcomes: Vec<String> = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}={}", s["name"], s["outcome"]))
        .collect();
    assert_eq!(
        outcomes.join(" ").replace('"', ""),
        "read-config=ok identity=ok host-prep=ok runtime=ok join-worker=ok done=ok",
        "host-prep is retried, nothing before it redone but identity"
    );
}

#[test]
fn status_prints_state_and_card() {
    let node = Node::new("lb1");
    assert!(node.run().status.success());
    let out = node.agent(&["status"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "identity: lb1 (10.0.2.10/24, director, cluster qemu-lab)",
        "joined as: lb1",
        "director",
        "status (",
        ": done, boot 1",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let json = node.agent(&["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["status"]["phase"], "done");
    assert_eq!(v["state"]["identity"]["name"], "lb1");
}

#[test]
fn reset_forgets_the_steps_and_the_next_run_needs_the_secrets_again() {
    let node = Node::new("w1");
    assert!(node.run().status.success());
    let out = node.agent(&["reset"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("removed") && text.contains("state.json") && text.contains("join-worker"),
        "{text}"
    );
    assert!(!node.host("/var/lib/piha/state.json").exists());
    let again = node.agent(&["reset"]).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to reset"));

    // The secrets left the card when the node was done: a node that has
    // forgotten its join cannot use the card, which lists secrets it lacks.
    let out = node.run();
    assert_eq!(out.status.code(), Some(2));
    let error = node.status()["error"].as_str().unwrap().to_string();
    assert!(error.contains("the card holds none") && error.contains("re-stamp"), "{error}");

    // Re-stamped: kubeadm's leftovers are reset and the node joins again.
    for s in for_role(node_config("w1").node.role) {
        let contents = if s.rel == "bootstrap-token" {
            format!("{}\n", agent_support::TOKEN)
        } else {
            format!("sha256:{}\n", "ab".repeat(32))
        };
        node.write_card(&format!("secrets/{}", s.rel), &contents);
    }
    node.write("/etc/kubernetes/kubelet.conf", "left by the earlier join\n");
    let log_before = node.command_log().lines().count();
    assert!(node.run().status.success());
    let log = node.command_log();
    let rerun: Vec<&str> = log.lines().skip(log_before).collect();
    let reset = rerun
        .iter()
        .position(|l| *l == "kubeadm reset -f")
        .expect("kubeadm's leftovers are reset");
    assert!(
        reset < rerun.iter().position(|l| l.starts_with("kubeadm join")).unwrap(),
        "{rerun:#?}"
    );
}
