//! `piha lab` end to end, as a user runs it: `up` on `examples/qemu-lab.yaml`
//! (two directors, three control planes, a worker; the shared amd64 test
//! image), `check`, `down`; every row of the check asserted, and nothing left
//! behind. Before that, an `up` killed half-way must be found and cleaned by
//! the next `up`. Real QEMU (TCG), real bridge, ARP, IPVS, VRRP and TLS
//! between the VMs; only the API server behind the VIP is the test profile's
//! stand-in (DESIGN.md, "What is real in tests here").
//!
//! The refusals that come before any VM are tested without booting anything.
//!
//! On this machine (2 cores, TCG) the whole test takes about 6 minutes:
//! `up` about 3 (every agent done), `check` about 2.5.

// Tests run the binaries under test and the host tools that check their
// output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::shared::shared_build;
use support::{heavy, piha, repo, run_ok};

/// A fresh working directory for one test under target/, with a copy of
/// `examples/qemu-lab.yaml` (secrets are made by `piha lab up`).
fn workdir(name: &str) -> (PathBuf, PathBuf) {
    let dir = repo().join("target/piha-lab-test").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create workdir");
    let cluster = dir.join("cluster.yaml");
    std::fs::copy(repo().join("examples/qemu-lab.yaml"), &cluster).expect("copy the example");
    (dir, cluster)
}

fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run piha");
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn namespaces() -> String {
    run_ok(Command::new("ip").args(["netns", "list"]))
}

/// QEMU processes started for the lab in `lab` (their command line names its directory).
fn lab_processes(lab: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&lab.display().to_string()) && !cmd.contains("cargo") && !cmd.contains("lab.rs") {
                found.push(cmd);
            }
        }
    }
    found
}

fn lab_state(lab: &Path) -> Value {
    let raw = std::fs::read(lab.join("lab.json")).expect("lab.json");
    serde_json::from_slice(&raw).expect("lab.json is JSON")
}

fn ssh(lab: &Path, ns: &str, ip: &str, command: &str) -> String {
    run_ok(
        Command::new("ip")
            .args(["netns", "exec", ns, "ssh", "-F", "/dev/null", "-i"])
            .arg(lab.join("ssh/id_ed25519"))
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR", &format!("piha@{ip}"), command]),
    )
}

/// `piha lab up` of `cluster` in `lab`, booting `image`.
fn lab_up(cluster: &Path, lab: &Path, image: &Path) -> Command {
    let mut c = piha();
    c.args(["lab", "up", "--cluster"])
        .arg(cluster)
        .arg("--dir")
        .arg(lab)
        .arg("--image")
        .arg(image);
    c
}

/// Starts `piha lab up` and kills it (SIGKILL) once its first VM is powered on.
fn up_killed_half_way(cluster: &Path, lab: &Path, image: &Path) {
    let mut child = lab_up(cluster, lab, image)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start piha lab up");
    let err = child.stderr.take().expect("stderr");
    for line in BufReader::new(err).lines().map_while(Result::ok) {
        eprintln!("(killed up) {line}");
        if line.contains("powered on") {
            break;
        }
    }
    child.kill().expect("kill piha");
    let _ = child.wait();
}

/// Runs `piha lab down` on drop: a failed assertion must not leave six VMs
/// running under the rest of the test run.
struct DownOnDrop<'a>(&'a Path);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = piha().args(["lab", "down", "--dir"]).arg(self.0).output();
        }
    }
}

#[test]
fn lab_up_check_down_on_the_qemu_lab_cluster() {
    let _g = heavy();
    let image = shared_build("amd64").image.clone();
    let (dir, cluster) = workdir("qemu-lab");
    let lab = dir.join("lab");
    let _down = DownOnDrop(&lab);

    // A `piha lab up` killed half-way leaves a namespace and a VM ...
    up_killed_half_way(&cluster, &lab, &image);
    let ns = lab_state(&lab)["namespace"].as_str().expect("namespace").to_string();
    assert!(namespaces().contains(&ns), "the killed up made no namespace");
    assert!(!lab_processes(&lab).is_empty(), "the killed up started no VM");

    // ... which the next `up` finds and cleans before it starts over.
    let start = Instant::now();
    let up = lab_up(&cluster, &lab, &image)
        .args(["--timeout", "25"])
        .output()
        .expect("piha lab up");
    // Its progress lines are the lab's timeline: printed whatever happens.
    eprintln!(
        "piha lab up: {:.0} s\n{}{}",
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&up.stderr),
        String::from_utf8_lossy(&up.stdout)
    );
    assert!(up.status.success(), "piha lab up failed (its output above)");
    let status: Value = serde_json::from_str(&run_ok(piha().args(["lab", "status", "--json", "--dir"]).arg(&lab))).expect("status JSON");
    let rows = status.as_array().expect("rows");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["lb1", "lb2", "cp1", "cp2", "cp3", "w1"], "{status:#}");
    for r in rows {
        assert_eq!(r["vm"], "running", "{r}");
        assert_eq!(r["phase"], "done", "{r}");
        assert_eq!(r["boots"], 1, "{r}");
    }

    // Bad input while it runs, refused with nothing touched.
    let err = fails(&mut lab_up(&cluster, &lab, &image));
    assert!(err.contains("a lab already runs in") && err.contains("piha lab down"), "{err}");
    let err = fails(piha().args(["lab", "stop", "cp9", "--dir"]).arg(&lab));
    assert!(
        err.contains("no node `cp9`") && err.contains("lb1, lb2, cp1, cp2, cp3, w1"),
        "{err}"
    );

    // The joining control planes found the API through the VIP by real token
    // discovery (the stand-in checks the JWS and the CA hash; a mismatch fails the join).
    let calls = ssh(&lab, &ns, "10.0.2.12", "cat /var/lib/piha-test/kubeadm-calls.jsonl");
    assert!(calls.contains("\"join\""), "cp2 never joined: {calls}");

    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_piha"))
        .args(["lab", "check", "--json", "--dir"])
        .arg(&lab)
        .output()
        .expect("piha lab check");
    eprintln!(
        "piha lab check: {:.0} s\n{}",
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("check JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let rows = rows.as_array().expect("rows").clone();
    for r in &rows {
        eprintln!(
            "{} {} | {}",
            if r["ok"] == true { "ok  " } else { "FAIL" },
            r["check"],
            r["measured"]
        );
    }
    let row = |prefix: &str| -> &Value {
        rows.iter()
            .find(|r| r["check"].as_str().unwrap_or_default().starts_with(prefix))
            .unwrap_or_else(|| panic!("no row `{prefix}`: {rows:#?}"))
    };
    assert!(row("API at 10.0.2.100:6443")["ok"] == true);
    for d in ["lb1", "lb2"] {
        let r = row(&format!("{d}: pool is exactly"));
        assert_eq!(r["measured"], "10.0.2.11, 10.0.2.12, 10.0.2.13", "{r}");
    }
    assert!(row("cp3: API answers but VIP not on lo")["ok"] == true, "{rows:#?}");
    let stop = row("stop cp1: the VIP keeps answering");
    assert!(stop["requests"].as_u64().unwrap_or(0) > 10, "{stop}");
    assert!(row("stop cp1: lb1 drops it")["ok"] == true, "{rows:#?}");
    let back = row("start cp1: back in the pool");
    assert_eq!(back["failed_requests"], 0, "{back}");
    assert!(row("power cut lb1 (MASTER): lb2 (BACKUP) takes the VIP")["ok"] == true, "{rows:#?}");
    assert!(row("start lb1: it takes the VIP back")["ok"] == true, "{rows:#?}");
    for r in &rows {
        assert!(r["ok"] == true, "failed row {r:#}");
    }
    assert!(out.status.success(), "check failed");
    // cp1 booted twice; the second boot did not run kubeadm init again.
    let calls = ssh(&lab, &ns, "10.0.2.11", "cat /var/lib/piha-test/kubeadm-calls.jsonl");
    assert_eq!(calls.matches("\"init\"").count(), 1, "{calls}");

    // Day two. `piha lab status` reads every node over ssh: all joined.
    let status: Value = serde_json::from_str(&run_ok(piha().args(["lab", "status", "--json", "--dir"]).arg(&lab))).expect("status JSON");
    for r in status.as_array().expect("rows") {
        assert_eq!(
            (&r["reachable"], &r["joined"], &r["phase"]),
            (&Value::Bool(true), &Value::Bool(true), &Value::from("done")),
            "{r}"
        );
    }
    // Replacing the init control plane's card: it finds its cluster at the
    // VIP and joins it, never a second `kubeadm init`; the VIP keeps serving.
    let r = reflash(&lab, "cp1");
    assert!(r["init"].as_str().unwrap_or_default().contains("instead of kubeadm init"), "{r:#}");
    let calls = ssh(&lab, &ns, "10.0.2.11", "cat /var/lib/piha-test/kubeadm-calls.jsonl");
    assert!(
        calls.contains("\"join\"") && !calls.contains("\"init\""),
        "the new cp1 ran: {calls}"
    );
    // The same for a joining control plane, and a fresh disk for the worker.
    let r = reflash(&lab, "cp2");
    assert!(r.get("init").is_none(), "{r:#}");
    reflash(&lab, "w1");
    let pools = director_pool(&lab, "lb1");
    assert!(pools.contains("10.0.2.11") && pools.contains("10.0.2.12"), "{pools}");

    // Every control plane down while a worker with a fresh card waits to
    // join: its status says it is retrying (the attempt, the next try, the
    // last error, an `updated` that keeps moving). With the control planes
    // back, it joins by itself: no reboot, no typing.
    for cp in ["cp1", "cp2", "cp3"] {
        run_ok(piha().args(["lab", "stop", cp, "--hard", "--dir"]).arg(&lab));
    }
    let start = Instant::now();
    run_ok(piha().args(["lab", "reflash", "w1", "--no-wait", "--dir"]).arg(&lab));
    let waiting = wait_for_row(&lab, "w1", Duration::from_secs(600), |r| r["phase"] == "retrying");
    eprintln!("w1 retrying {:.0} s after its new card: {waiting:#}", start.elapsed().as_secs_f64());
    eprintln!("{}", run_ok(piha().args(["lab", "status", "--dir"]).arg(&lab)));
    assert!(waiting["attempt"].as_u64().unwrap_or(0) >= 1, "{waiting:#}");
    assert!(waiting["next_try"].as_u64().is_some(), "{waiting:#}");
    assert!(
        waiting["error"].as_str().unwrap_or_default().contains("did not answer"),
        "{waiting:#}"
    );
    assert_eq!(waiting["joined"], false, "{waiting:#}");
    std::thread::sleep(Duration::from_secs(35));
    let later = lab_row(&lab, "w1");
    assert!(
        later["updated"].as_u64() > waiting["updated"].as_u64(),
        "status.json stood still while waiting: {later:#}"
    );
    let back = Instant::now();
    for cp in ["cp1", "cp2", "cp3"] {
        run_ok(piha().args(["lab", "start", cp, "--dir"]).arg(&lab));
    }
    let joined = wait_for_row(&lab, "w1", Duration::from_secs(900), |r| r["phase"] == "done");
    eprintln!(
        "w1 done {:.0} s after the control planes were powered on again: {joined:#}",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(joined["joined"], true, "{joined:#}");
    assert_eq!(joined["boots"], 1, "w1 joined without a reboot: {joined:#}");

    let out = run_ok(piha().args(["lab", "down", "--dir"]).arg(&lab));
    assert!(out.contains(&ns), "{out}");
    assert!(!namespaces().contains(&ns), "namespace left behind");
    assert!(lab_processes(&lab).is_empty(), "processes left: {:?}", lab_processes(&lab));
    assert!(!lab.join("lab.json").exists() && !lab.join("nodes").exists());
    let again = run_ok(piha().args(["lab", "down", "--dir"]).arg(&lab));
    assert!(again.contains("nothing was running"), "{again}");
}

/// `piha lab reflash NODE --json`: the node came back done and joined, and
/// the VIP kept serving meanwhile (most requests answered).
fn reflash(lab: &Path, node: &str) -> Value {
    let start = Instant::now();
    let out = piha()
        .args(["lab", "reflash", node, "--json", "--dir"])
        .arg(lab)
        .output()
        .expect("piha lab reflash");
    eprintln!(
        "piha lab reflash {node}: {:.0} s\n{}",
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("reflash JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    eprintln!("{r:#}");
    assert!(out.status.success(), "{r:#}");
    assert_eq!((&r["phase"], &r["joined"]), (&Value::from("done"), &Value::Bool(true)), "{r:#}");
    let (requests, failed) = (r["vip_requests"].as_u64().unwrap(), r["vip_failed"].as_u64().unwrap());
    assert!(
        requests > 10 && failed * 4 < requests,
        "the VIP did not keep serving while {node} was replaced: {r:#}"
    );
    r
}

/// One node's row of `piha lab status --json`.
fn lab_row(lab: &Path, node: &str) -> Value {
    let rows: Value = serde_json::from_str(&run_ok(piha().args(["lab", "status", "--json", "--dir"]).arg(lab))).expect("status JSON");
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|r| r["name"] == node)
        .cloned()
        .unwrap_or_else(|| panic!("no row {node}: {rows:#}"))
}

/// Polls `node`'s row until `want` holds; panics with the last row after `limit`.
fn wait_for_row(lab: &Path, node: &str, limit: Duration, want: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let r = lab_row(lab, node);
        if want(&r) {
            return r;
        }
        assert!(start.elapsed() < limit, "{node} did not get there within {limit:?}: {r:#}");
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// A director's IPVS pool, as `ipvsadm -Ln` lists it.
fn director_pool(lab: &Path, director: &str) -> String {
    let state = lab_state(lab);
    let ns = state["namespace"].as_str().unwrap().to_string();
    let ip = state["nodes"].as_array().unwrap().iter().find(|n| n["name"] == director).unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    ssh(lab, &ns, &ip, "sudo ipvsadm -Ln")
}

#[test]
fn a_board_without_a_vm_is_refused_before_anything_is_made() {
    let (dir, cluster) = workdir("rpi4");
    let text = std::fs::read_to_string(&cluster)
        .unwrap()
        .replacen("board: amd64", "board: rpi4", 1);
    std::fs::write(&cluster, text).unwrap();
    let lab = dir.join("lab");
    let err = fails(piha().args(["lab", "up", "--cluster"]).arg(&cluster).arg("--dir").arg(&lab));
    assert!(
        err.contains("the lab has no VM for lb1 (board rpi4)") && err.contains("--as-amd64"),
        "{err}"
    );
    assert!(!lab.exists(), "the refused up created {}", lab.display());
    assert!(!dir.join("secrets").exists(), "the refused up made secrets");
}

#[test]
fn the_lab_needs_root_and_says_so() {
    let (dir, cluster) = workdir("no-root");
    let lab = dir.join("lab");
    // A copy of piha that the unprivileged user can run wherever the checkout is.
    let bin = tempfile::tempdir().expect("tempdir");
    let exe = bin.path().join("piha");
    std::fs::copy(env!("CARGO_BIN_EXE_piha"), &exe).expect("copy piha");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["lab", "up", "--cluster"])
        .arg(&cluster)
        .arg("--dir")
        .arg(&lab)
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("piha lab needs root"), "{err}");
    assert!(!lab.exists());
}

#[test]
fn commands_on_a_directory_without_a_lab_say_how_to_start_one() {
    let (dir, _) = workdir("empty");
    let err = fails(piha().args(["lab", "status", "--dir"]).arg(dir.join("nothing")));
    assert!(err.contains("no lab in") && err.contains("piha lab up --cluster FILE"), "{err}");
    let out = run_ok(piha().args(["lab", "down", "--dir"]).arg(dir.join("nothing")));
    assert!(out.contains("nothing was running"), "{out}");
}

#[test]
fn a_choice_of_nodes_that_cannot_come_up_is_refused_before_anything_is_made() {
    let (dir, cluster) = workdir("nodes");
    let lab = dir.join("lab");
    for (nodes, want) in [
        ("lb1,cp2", "--nodes leaves out cp1, the init control plane of"),
        ("cp1,cp2", "--nodes leaves out every director of"),
        ("lb1,cp1,cp7", "--nodes names cp7, not a node of"),
    ] {
        let err = fails(
            piha()
                .args(["lab", "up", "--cluster"])
                .arg(&cluster)
                .arg("--dir")
                .arg(&lab)
                .args(["--nodes", nodes]),
        );
        assert!(err.contains(want), "{nodes}: {err}");
    }
    assert!(!lab.exists(), "the refused up created {}", lab.display());
    assert!(!dir.join("secrets").exists(), "the refused up made secrets");
}
