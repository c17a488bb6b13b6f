//! Waiting for a Kubernetes API server to answer.
//!
//! "Answers" means a TCP connection to `address:port` is accepted. Through the
//! VIP that happens only once a director has admitted a control plane, and
//! the directors admit one only while its health endpoint (piha-apicheck)
//! reports its API server ready (`/readyz`) and the VIP on its lo; so a
//! connection through the VIP reaches a ready API server. On 127.0.0.1 (the
//! init control plane raising its VIP) accepting is all that is needed: the
//! directors wait for `/readyz` themselves. No TLS client is needed here, and
//! an API server that is not ready yet makes `kubeadm join` retry on its own
//! (its discovery retries until its timeout).

use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use crate::retry::{Backoff, Sleeper, retry};

/// Checks whether something answers at an address. Replaced in tests.
pub trait Probe: Send + Sync {
    fn answers(&self, addr: SocketAddrV4) -> Result<(), String>;
}

/// A TCP connect with a timeout.
#[derive(Debug, Clone, Copy)]
pub struct TcpProbe {
    pub timeout: Duration,
}

impl Default for TcpProbe {
    fn default() -> Self {
        TcpProbe {
            timeout: Duration::from_secs(3),
        }
    }
}

impl Probe for TcpProbe {
    fn answers(&self, addr: SocketAddrV4) -> Result<(), String> {
        TcpStream::connect_timeout(&SocketAddr::V4(addr), self.timeout)
            .map(drop)
            .map_err(|e| format!("connecting to {addr}: {e}"))
    }
}

/// Waits until the API answers at `addr`, retrying per `backoff`; each try is
/// logged. With an unbounded backoff this only returns once it answers.
pub fn wait_for_api(what: &str, addr: SocketAddrV4, backoff: &Backoff, probe: &dyn Probe, sleeper: &dyn Sleeper) -> Result<(), String> {
    log::info!("waiting for {what} at {addr}");
    retry(&format!("waiting for {what} at {addr}"), backoff, sleeper, || probe.answers(addr)).map_err(|e| {
        let budget = backoff.budget().map(|d| format!(" within {}s", d.as_secs())).unwrap_or_default();
        format!("{what} at {addr} did not answer{budget}: {e}")
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
    use std::time::Duration;

    use super::{Probe, TcpProbe, wait_for_api};
    use crate::retry::{Backoff, ThreadSleeper};

    #[test]
    fn tcp_probe_sees_a_listener_and_its_absence() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = match l.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        assert!(TcpProbe::default().answers(addr).is_ok());
        drop(l);
        let err = TcpProbe::default().answers(addr).unwrap_err();
        assert!(err.contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn bounded_wait_names_the_endpoint() {
        // Port 1 on loopback: nothing listens there, the refusal is immediate.
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        let b = Backoff::new(Duration::from_millis(1), Duration::from_millis(1), Some(2));
        let err = wait_for_api("the local API server", addr, &b, &TcpProbe::default(), &ThreadSleeper).unwrap_err();
        assert!(
            err.starts_with("the local API server at 127.0.0.1:1 did not answer within 0s"),
            "{err}"
        );
    }
}
