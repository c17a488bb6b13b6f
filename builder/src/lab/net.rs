//! The lab network: a namespace of its own holding one bridge, whose address
//! is the cluster's gateway, and one tap per VM on that bridge. The namespace
//! has no other link and no route out: every packet of the lab stays in it.
//! Everything the lab runs on that network (QEMU, the time server, probes,
//! ssh to the nodes) runs inside it with `ip netns exec`.

use std::net::Ipv4Addr;

use anyhow::Context;
use piha_runner::{Cmd, Runner};

/// The bridge inside the namespace.
pub const BRIDGE: &str = "br0";

/// `cmd` run inside `namespace`.
pub fn exec(namespace: &str, cmd: Cmd) -> Cmd {
    let mut inner = Cmd::new("ip")
        .args(["netns", "exec", namespace, cmd.program.as_str()])
        .args(cmd.args);
    inner.env = cmd.env;
    inner.stdin = cmd.stdin;
    inner
}

pub fn exists(runner: &dyn Runner, namespace: &str) -> bool {
    runner
        .run(&Cmd::new("ip").args(["netns", "list"]))
        .map(|o| o.stdout_str().lines().any(|l| l.split_whitespace().next() == Some(namespace)))
        .unwrap_or(false)
}

/// Creates the namespace, its bridge at `gateway/prefix` and `taps` on it.
pub fn create(runner: &dyn Runner, namespace: &str, gateway: Ipv4Addr, prefix: u8, taps: &[String]) -> anyhow::Result<()> {
    runner
        .run(&Cmd::new("ip").args(["netns", "add", namespace]))
        .with_context(|| format!("creating the network namespace {namespace}"))?;
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        runner.run(&exec(namespace, Cmd::new("ip").args(args)))?;
        Ok(())
    };
    ip(&["link", "set", "lo", "up"])?;
    ip(&["link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
    ip(&["addr", "add", &format!("{gateway}/{prefix}"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    for tap in taps {
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(&["link", "set", tap, "master", BRIDGE])?;
        ip(&["link", "set", tap, "up"])?;
    }
    Ok(())
}

/// Every process running in the namespace (QEMU, the time server, watchers).
pub fn pids(runner: &dyn Runner, namespace: &str) -> Vec<i32> {
    runner
        .run(&Cmd::new("ip").args(["netns", "pids", namespace]))
        .map(|o| o.stdout_str().split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Deletes the namespace; its bridge and taps go with it.
pub fn delete(runner: &dyn Runner, namespace: &str) -> anyhow::Result<()> {
    runner
        .run(&Cmd::new("ip").args(["netns", "del", namespace]))
        .with_context(|| format!("deleting the network namespace {namespace}"))?;
    Ok(())
}

/// A MAC for a VM without one in the cluster file: QEMU's locally
/// administered prefix 52:54:00 and three bytes of the node's address.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use piha_runner::RecordingRunner;

    use super::{create, mac_for};

    #[test]
    fn the_bridge_holds_the_gateway_and_every_tap_and_nothing_else() {
        let r = RecordingRunner::new();
        create(&r, "piha-lab-x", Ipv4Addr::new(10, 0, 2, 2), 24, &["tap0".into(), "tap1".into()]).unwrap();
        let lines = r.command_lines();
        assert_eq!(lines[0], "ip netns add piha-lab-x");
        assert!(
            lines.contains(&"ip netns exec piha-lab-x ip addr add 10.0.2.2/24 dev br0".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"ip netns exec piha-lab-x ip link set tap1 master br0".to_string()));
        // No veth, no route: nothing leads out of the namespace.
        assert!(!lines.iter().any(|l| l.contains("veth") || l.contains("route")), "{lines:?}");
    }

    #[test]
    fn macs_are_stable_and_local() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 0, 2, 11)), "52:54:00:00:02:0b");
    }
}
