//! Progress for long work: indicatif bars and spinners when stderr is a
//! terminal, plain timestamped lines when it is not (CI logs, journald), and
//! nothing at all in tests. Every stage of `piha build` reports through a
//! [`Progress`]; a [`Task`] is one unit of work with an optional byte total.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// indicatif bars and spinners on stderr.
    Bars,
    /// One plain line per start, milestone and finish on stderr.
    Lines,
    /// Nothing (tests, `--json` consumers that capture stderr do not need this).
    Quiet,
}

/// The progress reporter handed to every stage.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    mode: Mode,
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn auto() -> Self {
        let mode = if std::io::stderr().is_terminal() { Mode::Bars } else { Mode::Lines };
        Progress { mode }
    }

    pub fn with_mode(mode: Mode) -> Self {
        Progress { mode }
    }

    /// Reports nothing; for tests and library callers.
    pub fn quiet() -> Self {
        Progress { mode: Mode::Quiet }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Work of unknown length (a spinner with the elapsed time).
    pub fn task(&self, label: &str) -> Task {
        Task::start(self.mode, label, None)
    }

    /// Work measured in bytes (a bar with throughput and ETA).
    pub fn bytes(&self, label: &str, total: u64) -> Task {
        Task::start(self.mode, label, Some(total))
    }

    /// A line of information that is not a task (a skipped step, a cache hit).
    pub fn note(&self, msg: &str) {
        match self.mode {
            Mode::Bars | Mode::Lines => eprintln!("piha: {msg}"),
            Mode::Quiet => {}
        }
    }
}

/// One unit of work. Finish it with [`Task::finish`]; dropping it unfinished
/// (an error path) clears the bar without a "done" line.
#[derive(Debug)]
pub struct Task {
    mode: Mode,
    label: String,
    start: Instant,
    bar: Option<ProgressBar>,
    total: Option<u64>,
    /// Plain-line mode prints a line at each quarter of the total; the last one printed.
    plain: Mutex<PlainState>,
}

#[derive(Debug, Default)]
struct PlainState {
    position: u64,
    quarter: u64,
}

impl Task {
    fn start(mode: Mode, label: &str, total: Option<u64>) -> Task {
        let bar = match mode {
            Mode::Bars => Some(new_bar(label, total)),
            Mode::Lines => {
                match total {
                    Some(t) => eprintln!("piha: {label} ({})…", human_bytes(t)),
                    None => eprintln!("piha: {label}…"),
                }
                None
            }
            Mode::Quiet => None,
        };
        Task {
            mode,
            label: label.to_string(),
            start: Instant::now(),
            bar,
            total,
            plain: Mutex::new(PlainState::default()),
        }
    }

    /// Advances a byte task by `n`.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if self.mode == Mode::Lines {
            let mut state = self.plain.lock().expect("progress lock");
            state.position += n;
            self.plain_milestone(&mut state);
        }
    }

    /// Sets the position of a byte task.
    pub fn set_position(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
        if self.mode == Mode::Lines {
            let mut state = self.plain.lock().expect("progress lock");
            state.position = pos;
            self.plain_milestone(&mut state);
        }
    }

    fn plain_milestone(&self, state: &mut PlainState) {
        let Some(total) = self.total.filter(|t| *t > 0) else { return };
        let quarter = (state.position.min(total) * 4) / total;
        if quarter > state.quarter && quarter < 4 {
            state.quarter = quarter;
            eprintln!(
                "piha: {}: {}% ({:.0} s)",
                self.label,
                quarter * 25,
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    /// Shows what the task is doing now (a spinner message, or a plain line).
    pub fn message(&self, msg: &str) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.set_message(msg.to_string()),
            (None, Mode::Lines) => eprintln!("piha: {}: {msg}", self.label),
            _ => {}
        }
    }

    /// Time since the task started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Ends the task with a "done" line and returns how long it took.
    pub fn finish(self) -> Duration {
        self.finish_with("done")
    }

    /// Ends the task with `outcome` (e.g. "cached") in the final line.
    pub fn finish_with(mut self, outcome: &str) -> Duration {
        let elapsed = self.start.elapsed();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.mode != Mode::Quiet {
            eprintln!("piha: {}: {outcome} ({:.1} s)", self.label, elapsed.as_secs_f64());
        }
        elapsed
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

fn new_bar(label: &str, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(t) => {
            let bar = ProgressBar::new(t);
            let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
                .expect("static template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{prefix:>12} {spinner} {elapsed} {msg}").expect("static template"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        }
    };
    bar.set_prefix(label.to_string());
    bar
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::{Progress, human_bytes};

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn quiet_tasks_measure_time() {
        let p = Progress::quiet();
        let t = p.bytes("copy", 100);
        t.inc(50);
        t.set_position(100);
        t.message("half");
        assert!(t.finish().as_secs() < 60);
    }
}
