//! `piha validate` on the corpus of bad cluster files in `tests/bad-clusters/`
//! (written by `generate.py` beside them): the real binary must fail on each
//! and print every message its `# expect:` lines name. The example clusters
//! must pass, and an even number of control planes must only warn.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The corpus holds at least 30 bad files; fewer means some went missing.
const MIN_CORPUS: usize = 32;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("builder/ has a parent")
        .to_path_buf()
}

/// Runs `piha validate --cluster FILE [extra]`: (success, stdout + stderr).
fn validate(file: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_piha"))
        .env("PIHA_DATA_DIR", root())
        .arg("validate")
        .arg("--cluster")
        .arg(file)
        .args(extra)
        .output()
        .expect("running piha");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The `# expect: ...` lines at the top of a corpus file.
fn expectations(text: &str) -> Vec<&str> {
    text.lines().map_while(|l| l.strip_prefix("# expect: ")).collect()
}

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root().join("tests/bad-clusters"))
        .expect("tests/bad-clusters")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_bad_cluster_fails_with_its_message() {
    let files = corpus();
    assert!(files.len() >= MIN_CORPUS, "only {} bad cluster files", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("corpus file");
        let expected = expectations(&text);
        assert!(!expected.is_empty(), "{} has no `# expect:` line", file.display());
        let (ok, output) = validate(file, &[]);
        if ok {
            failures.push(format!("{}: piha validate succeeded:\n{output}", file.display()));
        }
        for e in expected {
            if !output.contains(e) {
                failures.push(format!("{}: output lacks {e:?}:\n{output}", file.display()));
            }
        }
        // A bad file must never be called valid in the same breath.
        assert!(!output.contains(": ok"), "{output}");
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn many_errors_are_all_reported_at_once() {
    // The last file of the corpus (generate.py numbers it after every single-rule case).
    let file = fs::read_dir(root().join("tests/bad-clusters"))
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().ends_with("-many-errors.yaml"))
        .expect("a *-many-errors.yaml in the corpus");
    let text = fs::read_to_string(&file).expect("many-errors file");
    assert!(expectations(&text).len() >= 7);
    let (ok, _) = validate(&file, &[]);
    assert!(!ok);
    // The JSON form carries the same problems, each with its field path.
    let out = Command::new(env!("CARGO_BIN_EXE_piha"))
        .env("PIHA_DATA_DIR", root())
        .args(["validate", "--json", "--cluster"])
        .arg(&file)
        .output()
        .expect("running piha");
    assert!(!out.status.success());
    let problems: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON problems");
    let paths: Vec<&str> = problems.iter().map(|p| p["path"].as_str().expect("path")).collect();
    assert_eq!(
        paths,
        [
            "name",
            "distro",
            "kubernetes.version",
            "api.port",
            "nodes[0].mac",
            "nodes[1].board",
            "nodes[2].ip"
        ]
    );
    assert!(
        problems
            .iter()
            .all(|p| p["severity"] == "error" && !p["fix"].as_str().unwrap_or("").is_empty())
    );
}

#[test]
fn examples_are_valid() {
    for name in ["homelab", "qemu-lab"] {
        let file = root().join(format!("examples/{name}.yaml"));
        let (ok, output) = validate(&file, &[]);
        assert!(ok, "{name}: {output}");
        assert!(output.contains(": ok"), "{output}");
        assert!(!output.contains("error") && !output.contains("warning"), "{output}");
    }
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let text = fs::read_to_string(root().join("examples/homelab.yaml")).expect("example");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bom.yaml");
    fs::write(&file, format!("\u{feff}{text}")).expect("write");
    let (ok, output) = validate(&file, &[]);
    assert!(ok, "{output}");
}

/// Inputs built to hurt: a 2 MB file nested two million deep, and a 50 MB
/// value. Each is refused with a short message naming the file.
#[test]
fn huge_and_deep_files_are_refused_with_short_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deep = dir.path().join("deep.yaml");
    fs::write(&deep, format!("name: {}{}\n", "[".repeat(1 << 20), "]".repeat(1 << 20))).expect("write");
    let (ok, output) = validate(&deep, &[]);
    assert!(
        !ok && output.contains("deep.yaml") && output.contains("at most 262144 bytes"),
        "{output}"
    );
    assert!(output.len() < 1000, "{output}");

    let example = fs::read_to_string(root().join("examples/homelab.yaml")).expect("example");
    let huge = dir.path().join("huge.yaml");
    let value = "x".repeat(50 << 20);
    fs::write(&huge, format!("{example}\nextra: {value}\n")).expect("write");
    let (ok, output) = validate(&huge, &[]);
    assert!(!ok && output.contains("huge.yaml"), "{}", &output[..output.len().min(2000)]);
    assert!(output.len() < 1000, "{} bytes of output", output.len());

    // Under the size limit, a long value in a message is cut.
    let long = dir.path().join("long.yaml");
    fs::write(&long, example.replacen("\nname: ", &format!("\nname: {}", "y".repeat(100_000)), 1)).expect("write");
    let (ok, output) = validate(&long, &[]);
    assert!(
        !ok && output.contains("more bytes not shown"),
        "{}",
        &output[..output.len().min(2000)]
    );
    assert!(output.len() < 2000, "{} bytes of output", output.len());
}

#[test]
fn even_control_planes_only_warn() {
    let text = fs::read_to_string(root().join("examples/qemu-lab.yaml")).expect("example");
    let cp3 = "role: control-plane\n    ip: 10.0.2.13";
    assert_eq!(text.matches(cp3).count(), 1, "qemu-lab.yaml changed; update this test");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("two-cps.yaml");
    fs::write(&file, text.replace(cp3, "role: worker\n    ip: 10.0.2.13")).expect("write");
    let (ok, output) = validate(&file, &[]);
    assert!(ok, "{output}");
    assert!(output.contains("warning: "), "{output}");
    assert!(
        output.contains("nodes: 2 control planes tolerate no more failures than 1; etcd needs a majority"),
        "{output}"
    );
    assert!(output.contains("use an odd number of control planes: 1, 3 or 5"), "{output}");
}
