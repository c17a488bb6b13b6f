//! Is a cluster already serving? The init control plane asks before
//! `kubeadm init`, so that re-flashing its card does not make a second
//! cluster behind the same VIP (kubespray#10649 and #13516 are this problem).
//!
//! It asks the VIP and every other control plane's own address (so a
//! cluster whose directors are down is still found), each with a TLS
//! handshake verified against the cluster CA from this node's card
//! (`openssl s_client -verify_return_error`; the image has openssl for
//! piha-apicheck already):
//! - a handshake verifies: an API server of *this* cluster answers, so the
//!   node joins it as a control plane instead of running `kubeadm init`;
//! - every connection is refused, finds no host, or gets no answer within
//!   the timeout: nobody serves yet, so the node initialises the cluster;
//! - the VIP's certificate does not verify: another cluster (or something
//!   that is not an API server) holds the VIP; the node stops and says so;
//! - anything else (a reset mid-handshake, this node's own network not up,
//!   another CA at a control plane's address): unclear; the step fails and
//!   is tried again rather than guessing.
//!
//! Only the chain is checked, not the names or the dates (`-no_check_time`):
//! the chain proves the cluster, and an expired certificate of this cluster
//! is still this cluster. What no probe can see (every other control plane
//! powered off, the VIP with them) looks like "nobody": the node then
//! initialises, as it would on the first day.

use std::net::SocketAddrV4;

use anyhow::Context;
use piha_config::cluster::Role;
use piha_config::node::NodeConfig;
use piha_config::secrets::CA_CRT;
use piha_runner::{Cmd, RunError};

use crate::config_partition;
use crate::paths::PROBE_CA;
use crate::steps::Env;
use piha_atomic::{self as atomic, Perm};

/// Seconds the whole handshake may take.
pub const TIMEOUT_SECS: u32 = 10;

/// What answers at the VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing: refused or no answer.
    Nobody(String),
    /// An API server whose certificate verifies against this card's CA.
    ThisCluster,
    /// Something whose certificate does not verify against this card's CA.
    Foreign(String),
    /// Neither: guessing "nobody" could fork the cluster, so the caller
    /// fails the step (tried again) with this.
    Unclear(String),
}

/// The VIP and every other control plane, as the module doc says.
pub fn probe_cluster(env: &Env, cfg: &NodeConfig) -> anyhow::Result<Found> {
    let vip = SocketAddrV4::new(cfg.cluster.vip, cfg.cluster.api_port);
    let mut unclear = Vec::new();
    let mut nobody = Vec::new();
    match probe(env, vip)? {
        Found::ThisCluster => return Ok(Found::ThisCluster),
        Found::Foreign(said) => return Ok(Found::Foreign(said)),
        Found::Unclear(said) => unclear.push(format!("{vip}: {said}")),
        Found::Nobody(why) => nobody.push(why),
    }
    let others = cfg.peers.iter().filter(|p| p.role == Role::ControlPlane && p.name != cfg.node.name);
    for peer in others {
        let at = SocketAddrV4::new(peer.ip, cfg.cluster.api_port);
        match probe(env, at)? {
            Found::ThisCluster => return Ok(Found::ThisCluster),
            Found::Foreign(said) | Found::Unclear(said) => unclear.push(format!("{} at {at}: {said}", peer.name)),
            Found::Nobody(why) => nobody.push(why),
        }
    }
    if unclear.is_empty() {
        Ok(Found::Nobody(nobody.join("; ")))
    } else {
        Ok(Found::Unclear(unclear.join("; ")))
    }
}

/// The TLS handshake with `vip`, against the card's cluster CA.
pub fn probe(env: &Env, vip: SocketAddrV4) -> anyhow::Result<Found> {
    let ca = config_partition::read_secret(env.paths, CA_CRT)?;
    let path = env.paths.host(PROBE_CA);
    if let Some(dir) = path.parent() {
        atomic::create_dirs(dir, Perm::root(0o755)).with_context(|| format!("creating {}", dir.display()))?;
    }
    atomic::write(&path, &ca, Some(Perm::root(0o644))).with_context(|| format!("writing {}", path.display()))?;
    let cmd = Cmd::new("timeout")
        .arg(TIMEOUT_SECS.to_string())
        .args([
            "openssl",
            "s_client",
            "-brief",
            "-verify_return_error",
            "-no_check_time",
            "-connect",
        ])
        .arg(vip.to_string())
        .arg("-CAfile")
        .arg(&path)
        .stdin(Vec::new());
    Ok(classify(vip, env.runner.run(&cmd)))
}

/// Reads `openssl s_client`'s outcome (see the module doc).
pub fn classify(vip: SocketAddrV4, result: Result<piha_runner::Output, RunError>) -> Found {
    let err = match result {
        Ok(_) => return Found::ThisCluster,
        Err(e) => e,
    };
    let said = match &err {
        RunError::Failed { status, stderr_tail, .. } => format!("{status}: {stderr_tail}"),
        other => other.to_string(),
    };
    let lower = said.to_lowercase();
    if lower.contains("exit status: 124") {
        return Found::Nobody(format!("nothing answered at {vip} within {TIMEOUT_SECS} s"));
    }
    if ["connection refused", "errno=111"].iter().any(|w| lower.contains(w)) {
        return Found::Nobody(format!("{vip} refused the connection"));
    }
    if ["no route to host", "errno=113"].iter().any(|w| lower.contains(w)) {
        return Found::Nobody(format!("no host answers for {vip}"));
    }
    // "Network is unreachable" (errno 101) is this node's own network not
    // being up yet: it says nothing about the cluster, so it is unclear.
    if lower.contains("verify error") || lower.contains("certificate verify failed") || lower.contains("verification error") {
        return Found::Foreign(said.trim().to_string());
    }
    Found::Unclear(said.trim().to_string())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
    use std::path::Path;
    use std::process::Child;
    use std::time::{Duration, Instant};

    use piha_runner::{Cmd, Runner, SpawnOutput, SystemRunner};

    use super::{Found, probe};
    use crate::steps::Env;
    use crate::testing::Scratch;

    /// `openssl ARGS` with every `@name` argument a path in `dir`.
    fn openssl(dir: &Path, args: &[&str]) {
        let args = args.iter().map(|a| match a.strip_prefix('@') {
            Some(name) => dir.join(name).into_os_string(),
            None => (*a).into(),
        });
        SystemRunner.run(&Cmd::new("openssl").args(args)).unwrap();
    }

    /// A CA and a server certificate it signed, as `<name>-ca.crt`, `<name>.crt`, `<name>.key`.
    fn pki(dir: &Path, name: &str) {
        let ca = format!("{name}-ca");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let subject = format!("/CN={ca}");
        let (ca_key, ca_crt) = (format!("@{ca}.key"), format!("@{ca}.crt"));
        let (key, csr, crt) = (format!("@{name}.key"), format!("@{name}.csr"), format!("@{name}.crt"));
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", &subject, "-keyout", &ca_key, "-out", &ca_crt],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[&["req"][..], &ec, &["-subj", "/CN=kube-apiserver", "-keyout", &key, "-out", &csr]].concat(),
        );
        openssl(
            dir,
            &[
                "x509", "-req", "-in", &csr, "-CA", &ca_crt, "-CAkey", &ca_key, "-days", "1", "-out", &crt,
            ],
        );
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// `openssl s_server` on loopback with `name`'s certificate, once it listens.
    fn server(dir: &Path, name: &str, port: u16) -> Child {
        let cmd = Cmd::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(dir.join(format!("{name}.crt")))
            .arg("-key")
            .arg(dir.join(format!("{name}.key")));
        let child = piha_runner::spawn(&cmd, SpawnOutput::Piped).unwrap();
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "s_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// The real openssl, against real TLS servers on loopback: this cluster's
    /// API server, another cluster's, and nobody.
    #[test]
    fn tells_this_cluster_from_another_and_from_nobody() {
        let s = Scratch::new("cp1");
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path(), "ours");
        pki(dir.path(), "theirs");
        std::fs::copy(dir.path().join("ours-ca.crt"), s.paths.card_secret("pki/ca.crt")).unwrap();
        let env = Env {
            runner: &SystemRunner,
            ..s.env()
        };
        let at = |port| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);

        let port = free_port();
        let found = probe(&env, at(port)).unwrap();
        assert!(matches!(&found, Found::Nobody(why) if why.contains("refused")), "{found:?}");

        for (name, ours) in [("ours", true), ("theirs", false)] {
            let port = free_port();
            let mut srv = server(dir.path(), name, port);
            let found = probe(&env, at(port)).unwrap();
            srv.kill().unwrap();
            srv.wait().unwrap();
            if ours {
                assert_eq!(found, Found::ThisCluster);
            } else {
                assert!(matches!(&found, Found::Foreign(said) if said.contains("verify")), "{found:?}");
            }
        }
        assert_eq!(
            s.read(crate::paths::PROBE_CA),
            std::fs::read_to_string(dir.path().join("ours-ca.crt")).unwrap()
        );
    }

    /// Something that accepts and says nothing TLS: not a guess either way.
    #[test]
    fn a_listener_that_speaks_no_tls_is_unclear() {
        let s = Scratch::new("cp1");
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path(), "ours");
        std::fs::copy(dir.path().join("ours-ca.crt"), s.paths.card_secret("pki/ca.crt")).unwrap();
        let env = Env {
            runner: &SystemRunner,
            ..s.env()
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (conn, _) = l.accept().unwrap();
            drop(conn);
        });
        let found = probe(&env, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).unwrap();
        let start = Instant::now();
        while !t.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(5), "openssl never connected: {found:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(matches!(found, Found::Unclear(_)), "{found:?}");
    }
}
