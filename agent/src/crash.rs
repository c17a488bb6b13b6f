//! A test hook that simulates a power cut: with `PIHA_AGENT_CRASH_AT` set,
//! the agent aborts (no cleanup, no final writes, like a power cut) at the
//! named point. The power-cut test runs the real binary with it at every
//! point of every step, then once more without it, and checks the node ends
//! up exactly as after an uninterrupted run.
//!
//! `PIHA_AGENT_CRASH_AT=<step>:<point>`, where `<point>` is
//! - `before`: after the step's start is reported, before it does anything;
//! - `after-command-N`: right after the step's N-th external command returned
//!   (commands are numbered from 1 in the order they were started);
//! - `end`: after the step's work, before it is recorded as done.
//!
//! Unset (always, on a node) it costs one environment lookup at start.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use piha_runner::{Cmd, Output, RunError, Runner};

pub const ENV: &str = "PIHA_AGENT_CRASH_AT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Before,
    AfterCommand(u32),
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashAt {
    pub step: String,
    pub point: Point,
}

impl CrashAt {
    pub fn parse(text: &str) -> Result<CrashAt, String> {
        let bad = || format!("{ENV}={text}: expected <step>:before, <step>:after-command-<N> or <step>:end");
        let (step, point) = text.split_once(':').ok_or_else(bad)?;
        let point = match point {
            "before" => Point::Before,
            "end" => Point::End,
            other => {
                let n = other.strip_prefix("after-command-").ok_or_else(bad)?;
                Point::AfterCommand(n.parse().map_err(|_| bad())?)
            }
        };
        if step.is_empty() {
            return Err(bad());
        }
        Ok(CrashAt {
            step: step.to_string(),
            point,
        })
    }

    /// The hook from the environment, if set.
    pub fn from_env() -> Result<Option<CrashAt>, String> {
        match std::env::var(ENV) {
            Ok(v) if !v.is_empty() => CrashAt::parse(&v).map(Some),
            _ => Ok(None),
        }
    }
}

/// Tracks the current step and its command count; aborts where told.
#[derive(Debug, Default)]
pub struct Guard {
    plan: Option<CrashAt>,
    step: Mutex<String>,
    commands: AtomicU32,
}

impl Guard {
    pub fn new(plan: Option<CrashAt>) -> Guard {
        Guard {
            plan,
            step: Mutex::new(String::new()),
            commands: AtomicU32::new(0),
        }
    }

    /// A step begins: commands are counted from here.
    pub fn enter(&self, step: &str) {
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = step.to_string();
        self.commands.store(0, Ordering::SeqCst);
        self.check(step, Point::Before);
    }

    /// The step's work is finished but not yet recorded.
    pub fn end(&self, step: &str) {
        self.check(step, Point::End);
    }

    fn check(&self, step: &str, point: Point) {
        if let Some(plan) = &self.plan {
            if plan.step == step && plan.point == point {
                eprintln!("{ENV}={step}:{point:?}: aborting to simulate a power cut");
                std::process::abort();
            }
        }
    }
}

/// Wraps the real runner: numbers each command within its step and aborts
/// after the one the hook names.
pub struct CrashRunner<'a> {
    pub inner: &'a dyn Runner,
    pub guard: &'a Guard,
}

impl Runner for CrashRunner<'_> {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        let step = self.guard.step.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let n = self.guard.commands.fetch_add(1, Ordering::SeqCst) + 1;
        let result = self.inner.run(cmd);
        self.guard.check(&step, Point::AfterCommand(n));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::{CrashAt, Point};

    #[test]
    fn parses_every_point() {
        assert_eq!(
            CrashAt::parse("identity:before"),
            Ok(CrashAt {
                step: "identity".into(),
                point: Point::Before
            })
        );
        assert_eq!(CrashAt::parse("done:end").map(|c| c.point), Ok(Point::End));
        assert_eq!(
            CrashAt::parse("host-prep:after-command-3").map(|c| c.point),
            Ok(Point::AfterCommand(3))
        );
        for bad in ["", "identity", ":before", "identity:after-command-x", "identity:later"] {
            assert!(CrashAt::parse(bad).is_err(), "{bad}");
        }
    }
}
