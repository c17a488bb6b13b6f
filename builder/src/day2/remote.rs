//! Reading each node's status.json over SSH, every node at once (an
//! unreachable node costs its connect timeout, not the others').
//!
//! `piha status --cluster` uses the system `ssh` with the user's own keys,
//! agent and `~/.ssh/config` ([`UserSsh`]); `piha lab status` the lab's key
//! inside the lab's namespace. Either way the node runs one command, `sudo -n
//! cat` of status.json on PIHA-CFG (mounted root-only), as the admin user,
//! who has passwordless sudo on piha images.

use std::net::Ipv4Addr;

use piha_config::node::CONFIG_MOUNT;
use piha_config::status::{STATUS_FILE, Status};
use piha_runner::{Cmd, RunError, Runner};

use super::node_status::{NodeStatus, Who};

/// The admin user of piha images (overlays/base/etc/sudoers.d/piha).
pub const ADMIN_USER: &str = "piha";

/// What the node runs: its status.json, or the word `none` when the agent
/// has not written one yet. One `sudo`, so a sudo that refuses fails the
/// command (and says why) instead of reading as "no status yet".
pub fn read_command() -> String {
    let path = format!("{CONFIG_MOUNT}/{STATUS_FILE}");
    format!("sudo -n sh -c 'if test -e {path}; then cat {path}; else echo none; fi'")
}

/// The exit status ssh itself uses for its own failures (connection,
/// authentication); anything else is the remote command's.
const SSH_FAILED: &str = "exit status: 255";

/// How a command reaches a node.
pub trait Transport: Sync {
    fn command(&self, ip: Ipv4Addr, remote: &str) -> Cmd;
}

/// The system `ssh`, as the user would type it: their keys, agent and
/// `~/.ssh/config` apply; never a password prompt (BatchMode).
#[derive(Debug, Clone)]
pub struct UserSsh {
    pub user: String,
    /// Seconds to connect (and finish the key exchange).
    pub connect_timeout: u32,
}

impl Transport for UserSsh {
    fn command(&self, ip: Ipv4Addr, remote: &str) -> Cmd {
        Cmd::new("ssh")
            .args(["-o", "BatchMode=yes", "-o"])
            .arg(format!("ConnectTimeout={}", self.connect_timeout))
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2", "-l"])
            .arg(&self.user)
            .arg(ip.to_string())
            .arg(remote)
    }
}

/// Every node's row, read concurrently, in the order given.
pub fn fetch_all(runner: &dyn Runner, transport: &dyn Transport, nodes: &[(Who, Ipv4Addr)]) -> Vec<NodeStatus> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|(who, ip)| scope.spawn(move || fetch(runner, transport, who, *ip)))
            .collect();
        handles
            .into_iter()
            .zip(nodes)
            .map(|(h, (who, _))| {
                h.join()
                    .unwrap_or_else(|_| NodeStatus::new(who, Err("reading it panicked".into()), Some(false)))
            })
            .collect()
    })
}

/// One node's row over `transport`.
pub fn fetch(runner: &dyn Runner, transport: &dyn Transport, who: &Who, ip: Ipv4Addr) -> NodeStatus {
    match runner.run(&transport.command(ip, &read_command())) {
        Ok(out) => {
            let text = out.stdout_str();
            let read = if text.trim() == "none" {
                Ok(None)
            } else {
                serde_json::from_str::<Status>(&text)
                    .map(Some)
                    .map_err(|e| format!("{CONFIG_MOUNT}/{STATUS_FILE} on the node is not a status the builder reads: {e}"))
            };
            NodeStatus::new(who, read, Some(true))
        }
        Err(RunError::Failed { status, stderr_tail, .. }) if status != SSH_FAILED => NodeStatus::new(
            who,
            Err(format!(
                "reading {CONFIG_MOUNT}/{STATUS_FILE} on the node failed ({status}): {}",
                stderr_tail.trim()
            )),
            Some(true),
        ),
        Err(e) => NodeStatus::new(who, Err(unreachable(&e)), Some(false)),
    }
}

/// ssh's own words for why it could not reach the node.
fn unreachable(e: &RunError) -> String {
    match e {
        RunError::Failed { stderr_tail, status, .. } => {
            let said = stderr_tail.trim();
            if said.is_empty() { status.clone() } else { said.to_string() }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use piha_runner::{Cmd, Output, RecordingRunner};

    use super::{Transport, UserSsh, fetch_all, read_command};
    use crate::day2::node_status::{Who, table};

    #[test]
    fn the_users_own_ssh_runs_one_command() {
        let t = UserSsh {
            user: "piha".into(),
            connect_timeout: 10,
        };
        assert_eq!(
            t.command(Ipv4Addr::new(10, 0, 2, 11), "true").display(),
            "ssh -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=2 -l piha 10.0.2.11 true"
        );
        assert_eq!(
            read_command(),
            "sudo -n sh -c 'if test -e /boot/piha/status.json; then cat /boot/piha/status.json; else echo none; fi'"
        );
    }

    /// Every command fails with this exit status and stderr.
    struct Fails(&'static str, &'static str);
    impl piha_runner::Runner for Fails {
        fn run(&self, cmd: &Cmd) -> Result<Output, piha_runner::RunError> {
            Err(piha_runner::RunError::Failed {
                command: cmd.display(),
                status: self.0.into(),
                stderr_tail: self.1.into(),
            })
        }
    }

    struct Plain;
    impl Transport for Plain {
        fn command(&self, ip: Ipv4Addr, _remote: &str) -> Cmd {
            Cmd::new("ssh").arg(ip.to_string())
        }
    }

    /// A node that answers, one retrying, one with no status yet, and one
    /// unreachable: every row is listed.
    #[test]
    fn every_node_is_listed_the_unreachable_too() {
        let runner = RecordingRunner::new();
        let retrying = r#"{"schema":2,"node":"w1","role":"worker","phase":"retrying","updated":1700000100,"boots":1,
            "steps":[{"name":"join-worker","outcome":"failed","started":1700000000}],
            "retry":{"step":"join-worker","attempt":3,"next_try":1700000160,"last_error":"the cluster's API at 10.0.2.100:6443 did not answer"},
            "joined":false}"#;
        let done = r#"{"schema":2,"node":"cp1","role":"control-plane","phase":"done","updated":1700000100,"boots":2,"joined":true}"#;
        // Answers are handed out per program in call order; the calls run
        // concurrently, so every node gets the same kind of answer here and
        // the mix is checked through separate runs.
        let who = |n: &str| {
            (
                Who {
                    name: n.into(),
                    role: "worker".into(),
                    ip: "10.0.2.21".into(),
                },
                Ipv4Addr::new(10, 0, 2, 21),
            )
        };
        runner.respond(
            "ssh",
            Ok(Output {
                stdout: retrying.as_bytes().to_vec(),
                stderr: Vec::new(),
            }),
        );
        let rows = fetch_all(&runner, &Plain, &[who("w1")]);
        assert_eq!(rows[0].phase, "retrying");
        assert_eq!((rows[0].attempt, rows[0].next_try), (Some(3), Some(1_700_000_160)));
        assert!(rows[0].error.as_deref().unwrap().contains("did not answer"));
        assert!(!rows[0].joined);

        runner.respond(
            "ssh",
            Ok(Output {
                stdout: done.as_bytes().to_vec(),
                stderr: Vec::new(),
            }),
        );
        runner.respond(
            "ssh",
            Ok(Output {
                stdout: b"none\n".to_vec(),
                stderr: Vec::new(),
            }),
        );
        let rows = fetch_all(&runner, &Plain, &[who("a")]);
        let rows2 = fetch_all(&runner, &Plain, &[who("b")]);
        let rows3 = fetch_all(
            &Fails("exit status: 255", "ssh: connect to host 10.0.2.23 port 22: No route to host"),
            &Plain,
            &[who("c")],
        );
        let sudo = fetch_all(&Fails("exit status: 1", "sudo: a password is required"), &Plain, &[who("d")]);
        assert_eq!((sudo[0].phase.as_str(), sudo[0].reachable), ("unknown", Some(true)));
        assert!(
            sudo[0].error.as_deref().unwrap().contains("a password is required"),
            "{:?}",
            sudo[0]
        );
        assert_eq!(
            (rows[0].phase.as_str(), rows[0].joined, rows[0].reachable),
            ("done", true, Some(true))
        );
        assert_eq!((rows2[0].phase.as_str(), rows2[0].reachable), ("none", Some(true)));
        assert_eq!((rows3[0].phase.as_str(), rows3[0].reachable), ("unknown", Some(false)));
        assert!(rows3[0].unreachable.as_deref().unwrap().contains("No route to host"));

        let all: Vec<_> = [rows, rows2, rows3].concat();
        let text = table(&all);
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(
            text.contains("unreachable: ssh: connect to host 10.0.2.23 port 22: No route to host"),
            "{text}"
        );
    }
}
