//! `piha lab check`: seed 004's failover test, automated and measured.
//!
//! Rows, in order (each is measured, none is assumed):
//! 1. the API through the VIP from the namespace: TLS verified against the
//!    cluster CA, `/readyz` 200;
//! 2. each director's pool lists exactly the control planes that are up;
//! 3. a control plane whose API answers but whose VIP is off `lo` leaves the
//!    pool (and comes back when the VIP is back);
//! 4. stop the init control plane: the longest gap and the failed requests at
//!    the VIP, and how long after its check started failing the director
//!    dropped it;
//! 5. start it again: back in the pool with no typing, no failed request;
//! 6. with two directors: cut the MASTER's power, the BACKUP takes the VIP (gap,
//!    failed requests, and whether a connection opened before survives);
//!    start it again, it takes the VIP back (gap).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use piha_config::cluster::Role;
use piha_config::render::{keepalived, realserver};
use piha_config::{ipvs, secrets};
use piha_runner::{Cmd, Runner, SpawnOutput};
use serde::Serialize;

use super::dir::LabDir;
use super::nodes;
use super::probe::{self, Prober, Target, Window};
use super::state::{LabState, NodeState};
use super::watch::{PoolWatcher, WATCH_PERIOD_SECS};
use super::{net, ssh, vm};

/// How long a VM may take to boot and its agent to settle in a check.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the check waits for the pools to admit every control plane that is up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Probing goes on this long after the event a window measures.
const SETTLE: Duration = Duration::from_secs(3);
/// Longest gap allowed while VRRP moves the VIP after the MASTER's power is
/// cut: 3 missed adverts of 1 s plus the skew, the probe's connect timeout, and a
/// second of slack for a busy emulated BACKUP.
const VRRP_GAP_LIMIT: f64 = 6.0;
/// How long after the held connection is up the MASTER's power is cut: the
/// IPVS sync daemon sends a connection's state within 2 s of its change
/// (IPVS_SYNC_FLUSH_TIME), plus a second for an emulated director. The
/// connection's request then goes out once the BACKUP holds the VIP, well
/// inside the stand-in API's 30 s idle cut-off.
const SYNC_FLUSH: Duration = Duration::from_secs(3);

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub check: String,
    pub ok: bool,
    /// What was measured, for people.
    pub measured: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longest_gap_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_requests: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Why each failed request failed (curl's message, or the HTTP status).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

impl Row {
    fn new(check: impl Into<String>, ok: bool, measured: impl Into<String>) -> Row {
        Row {
            check: check.into(),
            ok,
            measured: measured.into(),
            longest_gap_s: None,
            failed_requests: None,
            requests: None,
            seconds: None,
            failures: Vec::new(),
        }
    }

    /// The row's window of probes; the first failure, if any, is told.
    fn window(mut self, w: Window) -> Row {
        self.longest_gap_s = Some(w.longest_gap);
        self.failed_requests = Some(w.failed);
        self.requests = Some(w.requests);
        if let Some(first) = w.failures.first() {
            self.measured = format!("{} (first failure: {first})", self.measured);
        }
        self.failures = w.failures;
        self
    }

    fn seconds(mut self, s: f64) -> Row {
        self.seconds = Some((s * 10.0).round() / 10.0);
        self
    }
}

struct Lab<'a> {
    dir: &'a LabDir,
    state: &'a LabState,
    runner: &'a dyn Runner,
    ca: PathBuf,
    vip: SocketAddrV4,
}

impl Lab<'_> {
    fn ns(&self) -> &str {
        &self.state.namespace
    }

    /// `/readyz` at `ip` on the API port, TLS verified against the cluster CA.
    fn readyz(&self, ip: Ipv4Addr) -> Target {
        Target::Https {
            ca: self.ca.clone(),
            ip,
            port: self.vip.port(),
            path: "/readyz".into(),
        }
    }

    fn vip_prober(&self) -> Prober {
        Prober::start(self.ns(), self.readyz(*self.vip.ip()))
    }

    fn watchers(&self) -> anyhow::Result<Vec<(String, PoolWatcher)>> {
        self.state
            .of_role(Role::Director)
            .filter(|d| vm::running(self.dir, &d.name))
            .map(|d| Ok((d.name.clone(), PoolWatcher::start(self.dir, self.ns(), d.ip, self.vip)?)))
            .collect()
    }

    fn ssh(&self, node: &NodeState, cmd: &str) -> anyhow::Result<String> {
        Ok(ssh::run(self.runner, self.dir, self.ns(), node.ip, cmd)?.stdout_str())
    }

    /// The control planes whose VM runs and whose agent is done.
    fn up_control_planes(&self) -> Vec<Ipv4Addr> {
        let mut up: Vec<Ipv4Addr> = self
            .state
            .of_role(Role::ControlPlane)
            .filter(|n| {
                let r = nodes::row(self.dir, n);
                r.vm == Some("running") && r.phase == "done"
            })
            .map(|n| n.ip)
            .collect();
        up.sort();
        up
    }

    fn holds_vip(&self, node: &NodeState) -> bool {
        self.ssh(node, "ip -j -4 addr show")
            .ok()
            .and_then(|out| ipvs::nic_holding(out.as_bytes(), *self.vip.ip()).ok().flatten())
            .is_some()
    }
}

/// Runs every row on the lab in `dir`. Fails only when the lab cannot be
/// checked at all; a failed row is a row with `ok: false`.
pub fn check(dir: &LabDir, runner: &dyn Runner) -> anyhow::Result<Vec<Row>> {
    super::up::require_root()?;
    let state = LabState::existing(dir)?;
    let down: Vec<&str> = state
        .nodes
        .iter()
        .filter(|n| !vm::running(dir, &n.name))
        .map(|n| n.name.as_str())
        .collect();
    if !down.is_empty() {
        bail!(
            "{} not running; `piha lab start NODE` first, the check needs the whole cluster up",
            down.join(", ")
        );
    }
    let lab = Lab {
        dir,
        state: &state,
        runner,
        ca: state.secrets.join(secrets::CA_CRT.rel),
        vip: SocketAddrV4::new(state.vip, state.api_port),
    };
    settle(&lab);
    let mut rows = vec![api_through_vip(&lab)];
    rows.extend(or_failed_row("the directors' pools", pools(&lab)));
    let cps: Vec<&NodeState> = state.of_role(Role::ControlPlane).collect();
    if let Some(last) = cps.last() {
        let what = format!("{}: VIP off lo", last.name);
        rows.extend(or_failed_row(&what, vip_off_lo(&lab, last).map(|r| vec![r])));
    }
    if let Some(first) = cps.first() {
        let what = format!("stop and start {}", first.name);
        rows.extend(or_failed_row(&what, stop_and_start_control_plane(&lab, first)));
    }
    let directors: Vec<&NodeState> = state.of_role(Role::Director).collect();
    if let [master, backup] = directors.as_slice() {
        let what = format!("power cut {} (MASTER)", master.name);
        rows.extend(or_failed_row(&what, director_failover(&lab, master, backup)));
    }
    Ok(rows)
}

/// A part of the check that could not be carried out (a node did not answer
/// over ssh, a watcher could not start) is one failed row saying why; the
/// rows after it still run.
fn or_failed_row(what: &str, rows: anyhow::Result<Vec<Row>>) -> Vec<Row> {
    rows.unwrap_or_else(|e| vec![Row::new(format!("{what}: could not be run"), false, format!("{e:#}"))])
}

fn api_through_vip(lab: &Lab<'_>) -> Row {
    let start = Instant::now();
    let r = probe::get(lab.runner, lab.ns(), &lab.readyz(*lab.vip.ip()));
    let took = start.elapsed().as_secs_f64();
    let name = format!("API at {}: TLS verified against the cluster CA, /readyz", lab.vip);
    match r {
        Ok(200) => Row::new(name, true, format!("200 in {took:.2} s")).seconds(took),
        Ok(code) => Row::new(name, false, format!("HTTP {code}")),
        Err(e) => Row::new(name, false, e),
    }
}

/// Gives the directors up to [`SETTLE_TIMEOUT`] to admit every control
/// plane that is up: `up` returns when the agents are done, and a director
/// admits a control plane only after its next passing check.
fn settle(lab: &Lab<'_>) {
    let expected = lab.up_control_planes();
    let settled = || {
        lab.state.of_role(Role::Director).all(|d| {
            lab.ssh(d, "sudo ipvsadm -Ln")
                .is_ok_and(|listing| super::watch::servers(&listing, lab.vip) == expected)
        })
    };
    if wait_until(SETTLE_TIMEOUT, settled).is_none() {
        log::warn!("the directors' pools did not settle within {} s", SETTLE_TIMEOUT.as_secs());
    }
}

fn ips(list: &[Ipv4Addr]) -> String {
    if list.is_empty() {
        return "(none)".into();
    }
    list.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ")
}

fn pools(lab: &Lab<'_>) -> anyhow::Result<Vec<Row>> {
    let expected = lab.up_control_planes();
    let mut rows = Vec::new();
    for d in lab.state.of_role(Role::Director) {
        let listing = lab.ssh(d, "sudo ipvsadm -Ln")?;
        let got = super::watch::servers(&listing, lab.vip);
        rows.push(Row::new(
            format!("{}: pool is exactly the control planes that are up ({})", d.name, ips(&expected)),
            got == expected,
            ips(&got),
        ));
    }
    Ok(rows)
}

fn removal_limit() -> f64 {
    f64::from(keepalived::WORST_CASE_REMOVAL_SECS) + WATCH_PERIOD_SECS + 0.5
}

/// Row 3: the API answers on the node's own address, the VIP is taken off its
/// `lo`: the directors must drop it, and take it back when the VIP returns.
fn vip_off_lo(lab: &Lab<'_>, cp: &NodeState) -> anyhow::Result<Row> {
    let watchers = lab.watchers()?;
    let name = format!("{}: API answers but VIP not on lo: out of the pool, back with the VIP", cp.name);
    let t0 = Instant::now();
    lab.ssh(cp, "sudo systemctl stop piha-realserver.service")?;
    let limit = Duration::from_secs_f64(removal_limit());
    let out = watchers
        .iter()
        .all(|(_, w)| w.wait_for(t0, limit + Duration::from_secs(5), |s| !s.contains(&cp.ip)).is_some());
    let removed_after = t0.elapsed().as_secs_f64();
    let api = probe::get(lab.runner, lab.ns(), &lab.readyz(cp.ip));
    let t1 = Instant::now();
    lab.ssh(cp, "sudo systemctl start piha-realserver.service")?;
    let back = watchers
        .iter()
        .all(|(_, w)| w.wait_for(t1, limit + Duration::from_secs(5), |s| s.contains(&cp.ip)).is_some());
    let back_after = t1.elapsed().as_secs_f64();
    let ok = out && back && api == Ok(200);
    Ok(Row::new(
        name,
        ok,
        format!(
            "{} after {removed_after:.1} s while its API answered {}; {} {back_after:.1} s after the VIP returned",
            if out { "dropped" } else { "NOT dropped" },
            api.map(|c| c.to_string()).unwrap_or_else(|e| e),
            if back { "back" } else { "NOT back" }
        ),
    ))
}

/// Rows 4 and 5: a clean shutdown of a control plane, then power on.
fn stop_and_start_control_plane(lab: &Lab<'_>, cp: &NodeState) -> anyhow::Result<Vec<Row>> {
    let watchers = lab.watchers()?;
    let vip = lab.vip_prober();
    let health = Prober::start(
        lab.ns(),
        Target::Http {
            ip: cp.ip,
            port: realserver::APICHECK_PORT,
            path: keepalived::CHECK_PATH.into(),
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let t_stop = Instant::now();
    vm::shut_down(lab.dir, &cp.name)?;
    let removed: Vec<Option<Instant>> = watchers
        .iter()
        .map(|(_, w)| w.wait_for(t_stop, Duration::from_secs(30), |s| !s.contains(&cp.ip)))
        .collect();
    std::thread::sleep(SETTLE);
    let t_end = Instant::now();
    let w = vip.window(t_stop, t_end);
    let failing_since = health.first_failure_after(t_stop).unwrap_or(t_stop);
    drop(health);
    let mut rows = Vec::new();
    let limit = removal_limit();
    rows.push(
        Row::new(
            format!("stop {}: the VIP keeps answering", cp.name),
            w.longest_gap <= limit + f64::from(probe::CONNECT_TIMEOUT_SECS) && vip.window(t_end - SETTLE, t_end).failed == 0,
            format!("longest gap {:.2} s, {} of {} requests failed", w.longest_gap, w.failed, w.requests),
        )
        .window(w),
    );
    for ((name, _), at) in watchers.iter().zip(&removed) {
        let row = match at {
            Some(at) => {
                let secs = at.saturating_duration_since(failing_since).as_secs_f64();
                Row::new(
                    format!("stop {}: {name} drops it within its check interval ({limit:.1} s)", cp.name),
                    secs <= limit,
                    format!("dropped {secs:.1} s after its API check started failing"),
                )
                .seconds(secs)
            }
            None => Row::new(format!("stop {}: {name} drops it", cp.name), false, "still in the pool after 30 s"),
        };
        rows.push(row);
    }

    let t_start = Instant::now();
    vm::power_on(lab.runner, &cp.argv)?;
    let back: Vec<Option<Instant>> = watchers
        .iter()
        .map(|(_, w)| w.wait_for(t_start, BOOT_TIMEOUT, |s| s.contains(&cp.ip)))
        .collect();
    std::thread::sleep(SETTLE);
    let w = vip.window(t_start, Instant::now());
    let last = back.iter().flatten().max().copied();
    let ok = back.iter().all(Option::is_some) && w.failed == 0;
    let measured = match last {
        Some(at) => format!(
            "back in the pool {:.0} s after power-on; {} of {} requests failed meanwhile",
            at.duration_since(t_start).as_secs_f64(),
            w.failed,
            w.requests
        ),
        None => format!("not back in the pool within {} s", BOOT_TIMEOUT.as_secs()),
    };
    let mut row = Row::new(format!("start {}: back in the pool, the VIP never fails", cp.name), ok, measured).window(w);
    if let Some(at) = last {
        row = row.seconds(at.duration_since(t_start).as_secs_f64());
    }
    rows.push(row);
    Ok(rows)
}

/// A TLS connection through the VIP, opened now, whose request goes out
/// only when [`HeldConnection::send`] is called: does it survive what
/// happens in between? openssl reads the request from a FIFO in the lab
/// directory; its output (the verified chain, then the answer) is collected
/// as it comes.
struct HeldConnection {
    child: std::process::Child,
    fifo: PathBuf,
    output: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl HeldConnection {
    fn open(lab: &Lab<'_>) -> anyhow::Result<HeldConnection> {
        let fifo = lab.dir.root().join("held-connection.fifo");
        let _ = std::fs::remove_file(&fifo);
        lab.runner
            .run(&Cmd::new("mkfifo").arg("-m").arg("600").arg(&fifo))
            .context("making the held connection's FIFO")?;
        // -quiet implies -ign_eof: the connection stays open after the
        // request, until the server answers and closes it.
        let script = format!(
            "cat '{}' | openssl s_client -quiet -connect {} -CAfile '{}' -verify_return_error 2>&1",
            fifo.display(),
            lab.vip,
            lab.ca.display()
        );
        let cmd = net::exec(lab.ns(), Cmd::new("sh").args(["-c", &script]));
        let mut child = piha_runner::spawn(&cmd, SpawnOutput::Piped).context("opening a held connection")?;
        let output = Arc::new(Mutex::new(String::new()));
        let reader = child.stdout.take().map(|out| {
            let output = output.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap_or_else(|e| e.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            })
        });
        Ok(HeldConnection {
            child,
            fifo,
            output,
            reader,
        })
    }

    fn output(&self) -> String {
        self.output.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the TLS handshake is done: the server's certificate
    /// (depth 0) verified.
    fn established(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let out = self.output();
            out.find("depth=0").is_some_and(|i| out[i..].contains("verify return:1"))
        })
        .is_some()
    }

    /// Sends the request over the open connection.
    fn send(&self) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking: if openssl's reader is gone, fail instead of waiting forever.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.fifo)
            .with_context(|| format!("opening {}", self.fifo.display()))?;
        f.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")
            .context("sending the held connection's request")
    }

    /// Whether the request got its 200 (waiting up to `timeout` for the answer).
    fn answered(mut self, timeout: Duration) -> bool {
        let got = wait_until(timeout, || self.output().lines().any(|l| l.starts_with("HTTP/"))).is_some();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = std::fs::remove_file(&self.fifo);
        got && self.output().lines().any(|l| l.starts_with("HTTP/") && l.contains(" 200"))
    }
}

/// Row 6: VRRP between two directors.
fn director_failover(lab: &Lab<'_>, master: &NodeState, backup: &NodeState) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let vip = lab.vip_prober();
    std::thread::sleep(Duration::from_secs(2));
    let held = HeldConnection::open(lab)?;
    let established = held.established(Duration::from_secs(30));
    std::thread::sleep(SYNC_FLUSH);
    let t_stop = Instant::now();
    vm::power_cut(lab.dir, &master.name).with_context(|| format!("cutting the power of {}", master.name))?;
    let moved = wait_until(Duration::from_secs(60), || lab.holds_vip(backup));
    std::thread::sleep(Duration::from_secs(1));
    let sent = established && held.send().is_ok();
    let handshake = held.output();
    let survived = sent && held.answered(Duration::from_secs(10));
    std::thread::sleep(SETTLE);
    let w = vip.window(t_stop, moved.unwrap_or(t_stop) + SETTLE);
    rows.push(
        Row::new(
            format!("power cut {} (MASTER): {} (BACKUP) takes the VIP", master.name, backup.name),
            moved.is_some() && w.longest_gap <= VRRP_GAP_LIMIT,
            format!(
                "{}; longest gap {:.2} s, {} of {} requests failed",
                if moved.is_some() {
                    format!("{} holds the VIP", backup.name)
                } else {
                    "the VIP did not move".into()
                },
                w.longest_gap,
                w.failed,
                w.requests
            ),
        )
        .window(w),
    );
    rows.push(Row::new(
        format!(
            "power cut {}: a connection opened through it carries on via {} (connection sync)",
            master.name, backup.name
        ),
        survived,
        if survived {
            "its request, sent after the failover, got 200".to_string()
        } else if !established {
            format!("the connection never completed its TLS handshake: {}", handshake.trim())
        } else {
            "reset: the BACKUP did not know the connection".to_string()
        },
    ));

    let t_start = Instant::now();
    vm::power_on(lab.runner, &master.argv)?;
    let back = wait_until(BOOT_TIMEOUT, || lab.holds_vip(master));
    std::thread::sleep(SETTLE);
    let w = vip.window(t_start, Instant::now());
    rows.push(
        Row::new(
            format!("start {}: it takes the VIP back", master.name),
            back.is_some() && w.longest_gap <= VRRP_GAP_LIMIT,
            match back {
                Some(at) => format!(
                    "{} holds the VIP {:.0} s after power-on; longest gap {:.2} s, {} of {} requests failed",
                    master.name,
                    at.duration_since(t_start).as_secs_f64(),
                    w.longest_gap,
                    w.failed,
                    w.requests
                ),
                None => format!("{} did not take the VIP back within {} s", master.name, BOOT_TIMEOUT.as_secs()),
            },
        )
        .window(w),
    );
    Ok(rows)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

/// The rows as a table.
pub fn table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.check.len()).max().unwrap_or(5).max(5);
    let mut out = format!("{:<4}  {:<width$}  {}\n", "OK", "CHECK", "MEASURED");
    for r in rows {
        out.push_str(&format!(
            "{:<4}  {:<width$}  {}\n",
            if r.ok { "ok" } else { "FAIL" },
            r.check,
            r.measured
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_that_cannot_run_is_one_failed_row_with_the_reason() {
        let err = Err(anyhow::anyhow!("ssh: connect to host 10.0.2.13 port 22: timed out"))
            .context("running `sudo systemctl stop piha-realserver.service` on 10.0.2.13 over ssh");
        let rows = or_failed_row("cp3: VIP off lo", err);
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].ok);
        assert_eq!(rows[0].check, "cp3: VIP off lo: could not be run");
        assert_eq!(
            rows[0].measured,
            "running `sudo systemctl stop piha-realserver.service` on 10.0.2.13 over ssh: ssh: connect to host 10.0.2.13 port 22: timed out"
        );
        let fine = or_failed_row("pools", Ok(vec![Row::new("lb1: pool", true, "10.0.2.11")]));
        assert_eq!(fine.len(), 1);
        assert!(fine[0].ok);
    }
}
