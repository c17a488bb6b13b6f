//! Shared helpers for the integration tests that build images and boot them:
//! where the piha binary and the test cache are, how to read files out of a
//! built image without mounting it, and a QEMU runner.

#![allow(dead_code)] // each test binary uses a different subset

pub mod disk;
pub mod image;
pub mod lab;
pub mod qemu;
pub mod shared;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("builder/ has a parent")
        .to_path_buf()
}

/// The real CLI under test.
pub fn piha() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_piha"));
    c.env("PIHA_CACHE_DIR", cache_dir());
    c
}

/// Slow inputs (rootfs tarballs, .debs, build roots) shared by every test run:
/// `$PIHA_CACHE_DIR`, else `target/piha-test-cache`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("PIHA_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo().join("target/piha-test-cache"),
    }
}

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Heavy work (image builds, VM boots) one at a time per test binary: the
/// machines these run on have two cores.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
