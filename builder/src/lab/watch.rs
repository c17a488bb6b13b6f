//! Watching a director from the lab: one ssh session that prints the IPVS
//! table every half second, read by a thread that timestamps each table as
//! it arrives. So "when did cp1 leave the pool" is measured on the host's
//! clock, to about half a second, without an ssh login per look.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use piha_config::ipvs;
use piha_runner::SpawnOutput;

use super::dir::LabDir;
use super::ssh;

/// How often the director prints its table.
pub const WATCH_PERIOD_SECS: f64 = 0.5;
const MARK: &str = "@@piha-lab@@";

/// One look at the pool: when it arrived and the real servers listed.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub real_servers: Vec<Ipv4Addr>,
}

pub struct PoolWatcher {
    child: Child,
    snapshots: Arc<Mutex<Vec<Snapshot>>>,
}

impl PoolWatcher {
    /// Starts watching the virtual server `vip` on the director at `director`.
    pub fn start(dir: &LabDir, namespace: &str, director: Ipv4Addr, vip: SocketAddrV4) -> anyhow::Result<PoolWatcher> {
        let script = format!("while :; do echo {MARK}; sudo ipvsadm -Ln; sleep {WATCH_PERIOD_SECS}; done");
        let mut child = piha_runner::spawn(&ssh::command(dir, namespace, director, &script), SpawnOutput::Piped)?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("ssh has no stdout"))?;
        let snapshots = Arc::new(Mutex::new(Vec::new()));
        let store = snapshots.clone();
        std::thread::spawn(move || {
            let mut block = String::new();
            let mut started = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == MARK {
                    if started {
                        let real_servers = servers(&block, vip);
                        store.lock().unwrap_or_else(|e| e.into_inner()).push(Snapshot {
                            at: Instant::now(),
                            real_servers,
                        });
                    }
                    started = true;
                    block.clear();
                } else {
                    block.push_str(&line);
                    block.push('\n');
                }
            }
        });
        Ok(PoolWatcher { child, snapshots })
    }

    pub fn latest(&self) -> Option<Snapshot> {
        self.snapshots.lock().unwrap_or_else(|e| e.into_inner()).last().cloned()
    }

    /// The first snapshot at or after `from` for which `pred` holds, waiting
    /// up to `timeout` for one.
    pub fn wait_for(&self, from: Instant, timeout: Duration, pred: impl Fn(&[Ipv4Addr]) -> bool) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .snapshots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|s| s.at >= from && pred(&s.real_servers))
                .map(|s| s.at);
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PoolWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real servers of the TCP virtual server `vip` in one `ipvsadm -Ln`.
pub fn servers(listing: &str, vip: SocketAddrV4) -> Vec<Ipv4Addr> {
    let services = ipvs::parse(listing);
    let mut out: Vec<Ipv4Addr> = ipvs::find(&services, vip)
        .map(|s| {
            s.real_servers
                .iter()
                .filter_map(|r| r.address.parse::<SocketAddrV4>().ok().map(|a| *a.ip()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
