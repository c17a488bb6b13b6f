//! Measuring the API from the lab's namespace: one HTTPS request with `curl`
//! (TLS verified against the cluster CA, hostname = the address asked), a
//! prober that repeats it about every 200 ms in the background, and the
//! statistics of a window of its samples (longest gap, failed requests).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use piha_runner::{Cmd, Runner, SystemRunner};

use super::net;

/// How often the prober asks, and how long one request may take.
pub const PROBE_PERIOD: Duration = Duration::from_millis(200);
pub const PROBE_TIMEOUT_SECS: u32 = 1;

/// One request from the namespace: `Ok(HTTP status)` when it was answered
/// (for HTTPS: with TLS verified against the CA for the address asked),
/// `Err(curl's message)` otherwise.
pub fn get(runner: &dyn Runner, namespace: &str, target: &Target) -> Result<u16, String> {
    let timeout = PROBE_TIMEOUT_SECS.to_string();
    let mut cmd = Cmd::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        &timeout,
        "--connect-timeout",
        &timeout,
    ]);
    cmd = match target {
        Target::Https { ca, ip, port, path } => cmd.arg("--cacert").arg(ca).arg(format!("https://{ip}:{port}{path}")),
        Target::Http { ip, port, path } => cmd.arg(format!("http://{ip}:{port}{path}")),
    };
    status(runner, namespace, cmd)
}

fn status(runner: &dyn Runner, namespace: &str, cmd: Cmd) -> Result<u16, String> {
    match runner.run(&net::exec(namespace, cmd)) {
        Ok(o) => o
            .stdout_str()
            .trim()
            .parse()
            .map_err(|_| format!("curl printed {:?}", o.stdout_str())),
        Err(e) => Err(e.to_string()),
    }
}

/// One probe: when it was sent (since the prober started) and whether it got 200.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub ok: bool,
}

/// What one URL did over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub requests: usize,
    pub failed: usize,
    /// The longest time without a successful answer, in seconds.
    pub longest_gap: f64,
}

/// Asks one URL every [`PROBE_PERIOD`] until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

/// What a prober asks.
#[derive(Debug, Clone)]
pub enum Target {
    /// HTTPS `path` at ip:port, TLS verified against `ca`; 200 is success.
    Https {
        ca: PathBuf,
        ip: Ipv4Addr,
        port: u16,
        path: String,
    },
    /// Plain HTTP; 200 is success.
    Http { ip: Ipv4Addr, port: u16, path: String },
}

impl Prober {
    pub fn start(namespace: &str, target: Target) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v, ns) = (stop.clone(), samples.clone(), namespace.to_string());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                let r = get(&SystemRunner, &ns, &target);
                v.lock().unwrap_or_else(|e| e.into_inner()).push(Sample { at, ok: r == Ok(200) });
                if let Some(rest) = PROBE_PERIOD.checked_sub(at.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        Prober {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first failed sample at or after `from`.
    pub fn first_failure_after(&self, from: Instant) -> Option<Instant> {
        self.samples().into_iter().find(|s| s.at >= from && !s.ok).map(|s| s.at)
    }

    pub fn window(&self, from: Instant, to: Instant) -> Window {
        window(&self.samples(), from, to)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Requests, failures and the longest gap between successes in [from, to].
/// The gap counts from `from` to the first success too, and from the last
/// success to `to`: a window with no success is one gap across all of it.
pub fn window(samples: &[Sample], from: Instant, to: Instant) -> Window {
    let inside: Vec<&Sample> = samples.iter().filter(|s| s.at >= from && s.at <= to).collect();
    let mut last_ok = from;
    let mut longest = Duration::ZERO;
    for s in inside.iter().filter(|s| s.ok) {
        longest = longest.max(s.at.duration_since(last_ok));
        last_ok = s.at;
    }
    longest = longest.max(to.saturating_duration_since(last_ok));
    Window {
        requests: inside.len(),
        failed: inside.iter().filter(|s| !s.ok).count(),
        longest_gap: (longest.as_secs_f64() * 100.0).round() / 100.0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Sample, window};

    #[test]
    fn the_longest_gap_is_between_successes() {
        let t0 = Instant::now();
        let at = |ms: u64, ok: bool| Sample {
            at: t0 + Duration::from_millis(ms),
            ok,
        };
        let s = [
            at(0, true),
            at(200, true),
            at(400, false),
            at(600, false),
            at(1400, true),
            at(1600, true),
        ];
        let w = window(&s, t0, t0 + Duration::from_millis(1600));
        assert_eq!(w.requests, 6);
        assert_eq!(w.failed, 2);
        assert_eq!(w.longest_gap, 1.2);
    }

    #[test]
    fn a_window_without_success_is_one_gap() {
        let t0 = Instant::now();
        let s = [Sample {
            at: t0 + Duration::from_millis(100),
            ok: false,
        }];
        let w = window(&s, t0, t0 + Duration::from_secs(3));
        assert_eq!((w.failed, w.longest_gap), (1, 3.0));
    }
}
