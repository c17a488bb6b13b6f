//! The one way piha and piha-agent run external commands (after bootc's
//! `CommandRunExt`): every command is logged, its stderr is captured and the
//! tail of it goes into the error. `Runner` is a trait so tests can replace it.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// How many bytes of stderr go into an error.
pub const STDERR_TAIL: usize = 2048;

/// A command to run: program, arguments, optional stdin and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd {
            program: program.into(),
            ..Cmd::default()
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// The command line as a shell would show it, for logs and errors.
    pub fn display(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            s.push(' ');
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains([' ', '"', '\'']) {
                s.push_str(&format!("{a:?}"));
            } else {
                s.push_str(&a);
            }
        }
        s
    }
}

/// What a finished command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("`{command}` could not start: {source} (is it installed? `piha doctor` lists host tools)")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr_tail}")]
    Failed {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("`{command}` printed output that could not be parsed: {detail}")]
    Parse { command: String, detail: String },
}

impl RunError {
    /// The captured stderr tail, for status reports.
    pub fn stderr_tail(&self) -> Option<&str> {
        match self {
            RunError::Failed { stderr_tail, .. } => Some(stderr_tail),
            _ => None,
        }
    }
}

/// Runs commands. `SystemRunner` for real; tests substitute their own.
pub trait Runner: Send + Sync {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError>;
}

/// Parsing a command's JSON output mode, for every runner, `&dyn Runner` included.
pub trait RunJson {
    /// Runs a command and parses its stdout as JSON (`sfdisk -J`, `lsblk -J`, `ip -j`).
    fn run_json<T: serde::de::DeserializeOwned>(&self, cmd: &Cmd) -> Result<T, RunError>;
}

impl<R: Runner + ?Sized> RunJson for R {
    fn run_json<T: serde::de::DeserializeOwned>(&self, cmd: &Cmd) -> Result<T, RunError> {
        let out = self.run(cmd)?;
        serde_json::from_slice(&out.stdout).map_err(|e| RunError::Parse {
            command: cmd.display(),
            detail: e.to_string(),
        })
    }
}

/// Keeps only the last `max` bytes of `bytes`, on a character boundary.
pub fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// Runs commands on this machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        log::info!("running: {}", cmd.display());
        // The one place piha spawns a process (clippy.toml bans it elsewhere).
        #[allow(clippy::disallowed_methods)]
        let mut command = Command::new(&cmd.program);
        command.args(&cmd.args);
        for (k, v) in &cmd.env {
            command.env(k, v);
        }
        command.stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|source| RunError::Spawn {
            command: cmd.display(),
            source,
        })?;
        // Feed stdin from a thread so a chatty child cannot deadlock on a full pipe.
        let feeder = match (child.stdin.take(), cmd.stdin.clone()) {
            (Some(mut pipe), Some(data)) => Some(std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&data);
            })),
            _ => None,
        };
        let mut stderr_pipe = child.stderr.take().expect("stderr piped");
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr_pipe.read_to_end(&mut buf);
            buf
        });
        let mut stdout = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            out.read_to_end(&mut stdout).map_err(|source| RunError::Spawn {
                command: cmd.display(),
                source,
            })?;
        }
        let status = child.wait().map_err(|source| RunError::Spawn {
            command: cmd.display(),
            source,
        })?;
        if let Some(f) = feeder {
            let _ = f.join();
        }
        let stderr = stderr_reader.join().unwrap_or_default();
        if status.success() {
            Ok(Output { stdout, stderr })
        } else {
            // Debug, not a warning: the error goes back to the caller, which
            // reports it (preflight names each unreachable source once) or
            // expects it (a probe that finds nothing yet).
            log::debug!("failed ({status}): {}", cmd.display());
            Err(RunError::Failed {
                command: cmd.display(),
                status: status.to_string(),
                stderr_tail: tail(&stderr, STDERR_TAIL),
            })
        }
    }
}

/// A runner for tests: records every command and answers from a script of
/// canned results keyed by program name; unknown programs succeed silently.
#[derive(Default)]
pub struct RecordingRunner {
    pub calls: Mutex<Vec<Cmd>>,
    pub responses: Mutex<Vec<(String, Result<Output, String>)>>,
}

impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next call of `program` returns `result` (Err(text) = failure with that stderr).
    pub fn respond(&self, program: &str, result: Result<Output, String>) {
        self.responses.lock().expect("lock").push((program.to_string(), result));
    }

    pub fn command_lines(&self) -> Vec<String> {
        self.calls.lock().expect("lock").iter().map(Cmd::display).collect()
    }
}

impl fmt::Debug for RecordingRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingRunner").field("calls", &self.command_lines()).finish()
    }
}

impl Runner for RecordingRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        self.calls.lock().expect("lock").push(cmd.clone());
        let mut responses = self.responses.lock().expect("lock");
        if let Some(i) = responses.iter().position(|(p, _)| *p == cmd.program) {
            let (_, result) = responses.remove(i);
            return result.map_err(|stderr| RunError::Failed {
                command: cmd.display(),
                status: "exit status: 1".to_string(),
                stderr_tail: tail(stderr.as_bytes(), STDERR_TAIL),
            });
        }
        Ok(Output::default())
    }
}

#[cfg(test)]
mod tests {
    use super::{Cmd, Output, RecordingRunner, RunError, RunJson, Runner, SystemRunner, tail};

    #[test]
    fn json_through_a_dyn_runner() {
        let recording = RecordingRunner::new();
        recording.respond(
            "lsblk",
            Ok(Output {
                stdout: br#"{"size": 42}"#.to_vec(),
                stderr: Vec::new(),
            }),
        );
        recording.respond(
            "lsblk",
            Ok(Output {
                stdout: b"not json".to_vec(),
                stderr: Vec::new(),
            }),
        );
        let runner: &dyn Runner = &recording;
        let v: serde_json::Value = runner.run_json(&Cmd::new("lsblk").arg("-J")).unwrap();
        assert_eq!(v["size"], 42);
        let err = runner.run_json::<serde_json::Value>(&Cmd::new("lsblk").arg("-J")).unwrap_err();
        assert!(matches!(err, RunError::Parse { .. }), "{err}");
    }

    #[test]
    fn failure_carries_stderr_tail() {
        let err = SystemRunner.run(&Cmd::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        match err {
            RunError::Failed { stderr_tail, status, .. } => {
                assert_eq!(stderr_tail, "boom");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stdin_and_stdout_flow() {
        let out = SystemRunner.run(&Cmd::new("cat").stdin(b"hello".to_vec())).unwrap();
        assert_eq!(out.stdout, b"hello");
    }

    #[test]
    fn missing_program_is_spawn_error() {
        let err = SystemRunner.run(&Cmd::new("piha-no-such-tool")).unwrap_err();
        assert!(matches!(err, RunError::Spawn { .. }));
        assert!(err.to_string().contains("piha doctor"));
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail(b"abcdef", 3), "…def");
        assert_eq!(tail(b"abc\n", 10), "abc");
    }

    #[test]
    fn recording_runner_scripts_results() {
        let r = RecordingRunner::new();
        r.respond("kubeadm", Err("no api".into()));
        assert!(r.run(&Cmd::new("kubeadm").arg("join")).is_err());
        assert!(r.run(&Cmd::new("kubeadm").arg("join")).is_ok());
        assert_eq!(r.command_lines(), vec!["kubeadm join", "kubeadm join"]);
    }
}

/// Where a [`spawn`]ed process's output goes.
#[derive(Debug)]
pub enum SpawnOutput {
    /// stdout piped to the caller (read it from `Child::stdout`), stderr discarded.
    Piped,
    /// stdout and stderr appended to this file; the process is put in a new
    /// session, so it outlives the caller (a daemon).
    Detached(std::path::PathBuf),
}

/// Starts `cmd` without waiting for it: a long-lived helper (a streaming
/// watcher, a daemon) rather than a command with a result. Logged like [`Runner::run`].
pub fn spawn(cmd: &Cmd, output: SpawnOutput) -> std::io::Result<std::process::Child> {
    log::info!("starting: {}", cmd.display());
    // The one place piha spawns a process (clippy.toml bans it elsewhere).
    #[allow(clippy::disallowed_methods)]
    let mut command = Command::new(&cmd.program);
    command.args(&cmd.args);
    for (k, v) in &cmd.env {
        command.env(k, v);
    }
    command.stdin(Stdio::null());
    match output {
        SpawnOutput::Piped => {
            command.stdout(Stdio::piped()).stderr(Stdio::null());
        }
        SpawnOutput::Detached(log) => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
            command.stdout(file.try_clone()?).stderr(file);
            // Its own process group: a Ctrl-C on the caller's terminal does not reach it.
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
    }
    command.spawn()
}
