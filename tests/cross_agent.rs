//! The aarch64 agent an arm64 image carries: built from this checkout by
//! `piha::pipeline::agent::cross::build_agent` (on this host: the Debian trixie build root,
//! rustc 1.85), then checked as a file and run under qemu-user.
//!
//! Needs root (chroot), mmdebstrap, qemu-user-static with binfmt, and Debian's
//! archive plus crates.io on the first run; the build root, vendored crates and
//! the binary are cached under `target/piha-test-cache` afterwards.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use piha::arch::Arch;
use piha::pipeline::agent::cross::{AgentBuildPath, Workspace, build_agent, detect};
use piha::pipeline::agent::sources;
use piha_runner::SystemRunner;

/// e_machine of an ELF file from its first 20 bytes (ELF64, little-endian).
fn elf_machine(path: &Path) -> u16 {
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(&head[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(head[4], 2, "{} is not ELFCLASS64", path.display());
    assert_eq!(head[5], 1, "{} is not little-endian", path.display());
    u16::from_le_bytes([head[18], head[19]])
}

#[test]
fn aarch64_agent_builds_and_runs_under_qemu_user() {
    let _heavy = support::heavy();
    let cache = support::cache_dir();
    let way = detect(Arch::Arm64, &SystemRunner);
    eprintln!("agent build path for arm64: {way}");

    let repo = support::repo();
    let source_hash = || sources::hash(&repo, &sources::list(&repo).expect("listing sources")).expect("hashing sources");
    let before = source_hash();
    let started = Instant::now();
    let ws = Workspace {
        checkout: &repo,
        cache_dir: &cache,
        debian_mirror: None,
    };
    let (bin, _) = build_agent(Arch::Arm64, way, &ws, &SystemRunner).expect("building the arm64 agent");
    eprintln!("first build_agent: {:.1} s", started.elapsed().as_secs_f64());
    assert!(bin.starts_with(&cache), "{} is not in the cache {}", bin.display(), cache.display());
    assert_eq!(elf_machine(&bin), 183, "{} is not an EM_AARCH64 binary", bin.display());

    // `file` is the independent judge of how it was linked.
    let file = support::run_ok(Command::new("file").arg("-b").arg(&bin));
    assert!(file.contains("ARM aarch64"), "{file}");
    assert!(file.contains("statically linked") || file.contains("static-pie linked"), "{file}");

    let help = support::run_ok(Command::new("qemu-aarch64-static").arg(&bin).arg("--help"));
    assert!(help.contains("piha-agent") || help.to_lowercase().contains("usage"), "{help}");

    // A second build of unchanged sources is the cached binary (unless the
    // checkout was edited meanwhile, which happens while people work in it).
    let started = Instant::now();
    let (again, _) = build_agent(Arch::Arm64, way, &ws, &SystemRunner).expect("second build");
    eprintln!("second build_agent: {:.1} s", started.elapsed().as_secs_f64());
    if source_hash() == before {
        assert_eq!(again, bin);
    }
    if way == AgentBuildPath::TrixieBuildroot {
        assert!(
            bin.to_string_lossy().contains("aarch64-unknown-linux-gnu-trixie-"),
            "{}",
            bin.display()
        );
    }
}

#[test]
fn native_agent_is_static() {
    let _heavy = support::heavy();
    let host = Arch::host().expect("the host is amd64 or arm64");
    assert_eq!(detect(host, &SystemRunner), AgentBuildPath::Native);
    let (repo, cache) = (support::repo(), support::cache_dir());
    let ws = Workspace {
        checkout: &repo,
        cache_dir: &cache,
        debian_mirror: None,
    };
    let (bin, _) = build_agent(host, AgentBuildPath::Native, &ws, &SystemRunner).expect("building the native agent");
    let want = host.elf_machine();
    assert_eq!(elf_machine(&bin), want, "{}", bin.display());
    let file = support::run_ok(Command::new("file").arg("-b").arg(&bin));
    assert!(file.contains("statically linked") || file.contains("static-pie linked"), "{file}");
    support::run_ok(Command::new(&bin).arg("--help"));
}
