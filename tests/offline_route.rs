//! README command 1 on a machine that cannot reach the production package
//! sources, as a newcomer meets it: `piha build --board amd64` with the
//! embedded defaults stops in its preflight, naming the unreachable sources,
//! and prints the offline route; that route, run exactly as printed, builds
//! a finished image.
//!
//! "Cannot reach" is made true on any machine by running command 1 in a
//! fresh network namespace (`support::shared::offline_error`): a machine
//! that can reach pkgs.k8s.io would otherwise start a real production build
//! here. The route's build is the shared amd64 build of this test run
//! (`support::shared`), which the structure checks and the boots use too.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;

use support::image::table;
use support::shared::{offline_error, route_of, shared_build};
use support::{repo, run_ok};

#[test]
fn the_printed_offline_route_builds_a_finished_image() {
    let shared = shared_build("amd64");

    // This run's piha, from a directory of its own, stops with the same route.
    let dir = tempfile::tempdir().expect("tempdir");
    let error = offline_error("amd64", dir.path());
    let unreachable = |what: &str| error.lines().any(|l| l.contains("cannot reach ") && l.contains(what));
    assert!(unreachable("pkgs.k8s.io"), "no unreachable Kubernetes source named:\n{error}");
    assert!(unreachable("(CRI-O "), "no unreachable CRI-O source named:\n{error}");
    // Each once: no WARN line of a failed curl beside the preflight's own.
    assert!(!error.contains("WARN"), "{error}");
    let named: Vec<&str> = error.lines().filter(|l| l.contains("cannot reach ")).collect();
    let mut unique = named.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(named.len(), unique.len(), "{error}");
    let route = route_of(&error);
    assert_eq!(route, shared.route, "the route the shared build ran is not the one piha prints now");

    // The route builds a containerd cluster: the embedded one's CRI-O is in no distro archive.
    let cluster = route.iter().position(|w| w == "--cluster").map(|i| &route[i + 1]);
    let cluster = cluster.unwrap_or_else(|| panic!("the route names no cluster file: {route:?}"));
    let text = std::fs::read_to_string(cluster).unwrap_or_else(|e| panic!("the route's cluster {cluster}: {e}"));
    assert!(text.contains("runtime: containerd"), "{cluster} is not a containerd cluster");

    // A finished image: every artifact, and a SHA256SUMS that holds.
    for key in ["image", "compressed", "bmap", "sums", "manifest"] {
        let path = shared.summary_path(key);
        assert!(path.is_file(), "{key}: {} is missing", path.display());
        assert_eq!(path.parent(), Some(shared.out.as_path()), "{key} is not beside the image");
    }
    let name = |key: &str| shared.summary_path(key).file_name().unwrap().to_string_lossy().into_owned();
    let stem = name("image").trim_end_matches(".img").to_string();
    assert_eq!(name("image"), format!("{stem}.img"));
    assert_eq!(name("compressed"), format!("{stem}.img.zst"));
    assert_eq!(name("bmap"), format!("{stem}.bmap"));
    assert_eq!(name("sums"), "SHA256SUMS");
    assert_eq!(name("manifest"), format!("{stem}.manifest.json"));
    assert!(
        shared.out.join("manifest.json").is_file(),
        "no manifest.json (the well-known name) in out/"
    );
    run_ok(
        std::process::Command::new("sha256sum")
            .arg("--check")
            .arg("--strict")
            .arg("SHA256SUMS")
            .current_dir(&shared.out),
    );
    assert_table_is_the_boards(&shared.image, "amd64");
}

/// From the checkout's root, as the README runs it, the route names the
/// cluster relative to it, and the README shows exactly that command.
#[test]
fn the_readme_shows_the_route_piha_prints() {
    let route = route_of(&offline_error("amd64", &repo()));
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let printed = format!("Offline route: `{}`", route.join(" "));
    assert!(readme.contains(&printed), "README.md does not quote piha's route {printed}");
    let run = format!("cargo run --release -p piha -- {}", route[1..].join(" "));
    assert!(readme.contains(&run), "README.md's offline route section lacks `{run}`");
}

/// sfdisk's table of `image` against `boards/BOARD.yaml`: the table kind and
/// the partitions' names in order (boot, PIHA-CFG, root).
fn assert_table_is_the_boards(image: &Path, board: &str) {
    let text = std::fs::read_to_string(repo().join(format!("boards/{board}.yaml"))).expect("board file");
    let yaml: yaml_serde::Value = yaml_serde::from_str(&text).expect("board file is YAML");
    let t = table(image);
    let kind = match yaml["partition_table"].as_str() {
        Some("gpt") => "gpt",
        Some("mbr") => "dos",
        other => panic!("boards/{board}.yaml: partition_table {other:?}"),
    };
    assert_eq!(t.label, kind, "{t:?}");
    assert_eq!(t.partitions.len(), 3, "{t:?}");
    if kind == "gpt" {
        let label = |part: &str| yaml["partitions"][part]["label"].as_str().map(str::to_string);
        let names: Vec<Option<String>> = t.partitions.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, vec![label("boot"), Some("PIHA-CFG".to_string()), label("root")]);
    }
}
