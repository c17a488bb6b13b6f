//! The hidden `--dry-run-commands` test hook: run the real agent binary on a
//! scratch root without touching the machine. Commands are appended to
//! `<root>/var/lib/piha/commands.log` instead of being run, and succeed with
//! empty output, unless the test left canned answers in
//! `<root>/var/lib/piha/dry-run/`:
//! - `<program>.stdout`: printed as the command's stdout (e.g. `ipvsadm`);
//! - `<program>.fail`: the command fails with this text as its stderr.
//!
//! The power-cut integration test uses it; it is not meant for nodes.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use piha_runner::{Cmd, Output, RunError, Runner, STDERR_TAIL, tail};

use crate::api_wait::Probe;
use crate::paths::{COMMAND_LOG, DRY_RUN_DIR, Paths};
use crate::retry::Sleeper;

/// The command log. Lines are commands as a shell shows them; a `# step NAME`
/// line precedes the first command of each step (steps without commands
/// leave no line).
#[derive(Debug)]
pub struct CommandLog {
    path: PathBuf,
    /// The step whose marker is written before its first command.
    pending_step: Mutex<Option<String>>,
}

impl CommandLog {
    /// Nothing is created until the first line: a run that stops at an
    /// invalid node.yaml must leave the root untouched, log included.
    pub fn new(paths: &Paths) -> CommandLog {
        CommandLog {
            path: paths.host(COMMAND_LOG),
            pending_step: Mutex::new(None),
        }
    }

    /// A step begins.
    pub fn step(&self, name: &str) {
        *self.pending_step.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.to_string());
    }

    /// Appends a command line (after the pending step marker, if any).
    pub fn append(&self, line: &str) {
        let mut pending = self.pending_step.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        if let Some(step) = pending.take() {
            text.push_str(&format!("# step {step}\n"));
        }
        text.push_str(line);
        text.push('\n');
        let dir = self.path.parent().unwrap_or(&self.path);
        let written = fs::create_dir_all(dir)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&self.path))
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            log::error!("dry run: cannot append to {}: {e}", self.path.display());
        }
    }

    fn contains_line_starting(&self, prefix: &str) -> bool {
        let _held = self.pending_step.lock().unwrap_or_else(|e| e.into_inner());
        fs::read_to_string(&self.path)
            .map(|t| t.lines().any(|l| l.starts_with(prefix)))
            .unwrap_or(false)
    }
}

/// Logs commands instead of running them.
pub struct LogRunner<'a> {
    pub log: &'a CommandLog,
    pub canned: PathBuf,
}

impl<'a> LogRunner<'a> {
    pub fn new(log: &'a CommandLog, paths: &Paths) -> LogRunner<'a> {
        LogRunner {
            log,
            canned: paths.host(DRY_RUN_DIR),
        }
    }
}

impl Runner for LogRunner<'_> {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        self.log.append(&cmd.display());
        let program = cmd.program.rsplit('/').next().unwrap_or(&cmd.program);
        if let Ok(stderr) = fs::read(self.canned.join(format!("{program}.fail"))) {
            return Err(RunError::Failed {
                command: cmd.display(),
                status: "exit status: 1".into(),
                stderr_tail: tail(&stderr, STDERR_TAIL),
            });
        }
        let stdout = fs::read(self.canned.join(format!("{program}.stdout"))).unwrap_or_default();
        Ok(Output {
            stdout,
            stderr: Vec::new(),
        })
    }
}

/// In a dry run, the local API server "answers" once `kubeadm init` was
/// logged (as on a node, where init starts it); a remote API (the VIP) always
/// answers, as if the rest of the cluster were up.
pub struct DryRunProbe<'a> {
    pub log: &'a CommandLog,
}

impl Probe for DryRunProbe<'_> {
    fn answers(&self, addr: SocketAddrV4) -> Result<(), String> {
        if !addr.ip().is_loopback() || self.log.contains_line_starting("kubeadm init") {
            Ok(())
        } else {
            Err(format!("dry run: nothing listens on {addr} before `kubeadm init`"))
        }
    }
}

/// Caps every pause at a few milliseconds so a dry run finishes quickly.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastSleeper;

impl Sleeper for FastSleeper {
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d.min(Duration::from_millis(5)));
    }
}
