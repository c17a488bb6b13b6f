//! Measuring the API from the lab's namespace: one HTTPS request with `curl`
//! (TLS verified against the cluster CA, hostname = the address asked), a
//! prober that repeats it about every 200 ms in the background, one request
//! at a time, and the statistics of a window of its samples (longest gap,
//! failed requests and why they failed).
//!
//! One at a time, as a client would: a prober that sent a request every
//! 200 ms whatever the answers did kept up to fifteen TLS handshakes in
//! flight against control planes emulated on two shared cores, which then
//! failed their own health checks (97 of 288 requests failed while cp1
//! booted, the pool at times empty).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use piha_runner::{Cmd, Runner, SystemRunner};

use super::net;

/// How often the prober sends a request, when the last was answered sooner.
pub const PROBE_PERIOD: Duration = Duration::from_millis(200);
/// How long a request may wait for its TCP connection: a SYN sent to a
/// backend that is gone gets nothing back, and fails after this.
pub const CONNECT_TIMEOUT_SECS: u32 = 1;
/// How long a connected request may take in all: the TLS handshake and the
/// answer of an emulated control plane that shares two host cores with five
/// other VMs, one of them booting (a slow answer is an answer, not a
/// failure of the VIP; a 1 s limit failed 1 of 205 requests that way).
pub const MAX_TIME_SECS: u32 = 3;

/// One request from the namespace: `Ok(HTTP status)` when it was answered
/// (for HTTPS: with TLS verified against the CA for the address asked),
/// `Err(curl's message)` otherwise.
pub fn get(runner: &dyn Runner, namespace: &str, target: &Target) -> Result<u16, String> {
    let mut cmd = Cmd::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--connect-timeout",
        &CONNECT_TIMEOUT_SECS.to_string(),
        "--max-time",
        &MAX_TIME_SECS.to_string(),
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
        // curl's own line, e.g. "curl: (28) Connection timed out after 1001 milliseconds".
        Err(e) => Err(e.stderr_tail().map(|t| t.trim().to_string()).unwrap_or_else(|| e.to_string())),
    }
}

/// One probe: when it was sent, and why it failed if it did not get 200.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub failure: Option<String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// What one URL did over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub requests: usize,
    pub failed: usize,
    /// The longest time without a successful answer, in seconds.
    pub longest_gap: f64,
    /// Why each failed request failed, in the order they were sent.
    pub failures: Vec<String>,
}

/// Asks one URL every [`PROBE_PERIOD`] (or as soon as the last request
/// ended, when it took longer) until dropped.
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

impl Target {
    fn url(&self) -> String {
        match self {
            Target::Https { ip, port, path, .. } => format!("https://{ip}:{port}{path}"),
            Target::Http { ip, port, path } => format!("http://{ip}:{port}{path}"),
        }
    }
}

impl Prober {
    pub fn start(namespace: &str, target: Target) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v, ns) = (stop.clone(), samples.clone(), namespace.to_string());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                let failure = match get(&SystemRunner, &ns, &target) {
                    Ok(200) => None,
                    Ok(code) => Some(format!("HTTP {code}")),
                    Err(e) => Some(e),
                };
                if let Some(f) = &failure {
                    let sent = at.duration_since(started).as_secs_f64();
                    log::warn!("probe of {} sent {sent:.1} s into the probing failed: {f}", target.url());
                }
                v.lock().unwrap_or_else(|e| e.into_inner()).push(Sample { at, failure });
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

    /// Every answered probe so far, in the order they were sent.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first failed sample at or after `from`.
    pub fn first_failure_after(&self, from: Instant) -> Option<Instant> {
        self.samples().into_iter().find(|s| s.at >= from && !s.ok()).map(|s| s.at)
    }

    /// The window [from, to], once the probe in flight at `to` has had its
    /// answer or its timeout (a probe still in flight would look like a gap).
    pub fn window(&self, from: Instant, to: Instant) -> Window {
        let settled = to + Duration::from_secs(u64::from(MAX_TIME_SECS)) + PROBE_PERIOD;
        if let Some(rest) = settled.checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
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

/// Requests, failures and the longest gap between successes in [from, to]
/// (`samples` in the order they were sent). The gap counts from `from` to
/// the first success too, and from the last success to `to`: a window with
/// no success is one gap across all of it.
pub fn window(samples: &[Sample], from: Instant, to: Instant) -> Window {
    let inside: Vec<&Sample> = samples.iter().filter(|s| s.at >= from && s.at <= to).collect();
    let mut last_ok = from;
    let mut longest = Duration::ZERO;
    for s in inside.iter().filter(|s| s.ok()) {
        longest = longest.max(s.at.duration_since(last_ok));
        last_ok = s.at;
    }
    longest = longest.max(to.saturating_duration_since(last_ok));
    let failures: Vec<String> = inside.iter().filter_map(|s| s.failure.clone()).collect();
    Window {
        requests: inside.len(),
        failed: failures.len(),
        longest_gap: (longest.as_secs_f64() * 100.0).round() / 100.0,
        failures,
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
            failure: (!ok).then(|| format!("curl: (28) Connection timed out at {ms}")),
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
        assert_eq!(
            w.failures,
            ["curl: (28) Connection timed out at 400", "curl: (28) Connection timed out at 600"]
        );
    }

    #[test]
    fn a_window_without_success_is_one_gap() {
        let t0 = Instant::now();
        let s = [Sample {
            at: t0 + Duration::from_millis(100),
            failure: Some("HTTP 503".into()),
        }];
        let w = window(&s, t0, t0 + Duration::from_secs(3));
        assert_eq!((w.failed, w.longest_gap), (1, 3.0));
    }
}
