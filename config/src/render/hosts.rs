//! `/etc/hostname` and `/etc/hosts`.
//!
//! Every node's own name maps to its node IP, never to 127.0.1.1 as Debian's
//! installer does: kubelet resolves its hostname to pick the node address, and
//! a loopback answer would make the node register with the wrong IP.

use serde::Serialize;

use crate::node::NodeConfig;

use super::template::{self, HOSTS};
use super::{RenderError, header};

/// `/etc/hostname`: the node name and a newline.
pub(crate) fn hostname(cfg: &NodeConfig) -> String {
    format!("{}\n", cfg.node.name)
}

/// The name /etc/hosts gives the VIP of cluster `cluster`: `<cluster>-api`.
pub(crate) fn api_name(cluster: &str) -> String {
    format!("{cluster}-api")
}

#[derive(Serialize)]
struct HostsData {
    header: String,
    vip: String,
    vip_names: String,
    peers: Vec<HostLine>,
}

#[derive(Serialize)]
struct HostLine {
    ip: String,
    names: String,
}

/// `/etc/hosts`: localhost, the VIP as `<cluster>-api`, and every node
/// (`name.domain name` when the cluster has a search domain).
pub(crate) fn etc_hosts(cfg: &NodeConfig) -> Result<String, RenderError> {
    let names = |short: &str| match &cfg.node.domain {
        Some(domain) => format!("{short}.{domain} {short}"),
        None => short.to_string(),
    };
    let data = HostsData {
        header: header("#", cfg),
        vip: cfg.cluster.vip.to_string(),
        vip_names: names(&api_name(&cfg.cluster.name)),
        peers: cfg
            .peers
            .iter()
            .map(|p| HostLine {
                ip: p.ip.to_string(),
                names: names(&p.name),
            })
            .collect(),
    };
    template::render(HOSTS, &data)
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use crate::node::NetworkRenderer;
    use crate::render::testing::node;

    use super::{etc_hosts, hostname};

    #[test]
    fn hostname_is_the_node_name() {
        assert_eq!(hostname(&node("cp1", NetworkRenderer::Networkd)), "cp1\n");
    }

    #[test]
    fn hosts_lists_every_peer_and_the_vip() {
        let text = etc_hosts(&node("w1", NetworkRenderer::Networkd)).expect("renders");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("10.")).collect();
        assert_eq!(
            lines,
            [
                "10.1.0.100\tlab-api.lab.example lab-api",
                "10.1.0.10\tlb1.lab.example lb1",
                "10.1.0.9\tlb2.lab.example lb2",
                "10.1.0.11\tcp1.lab.example cp1",
                "10.1.0.12\tcp2.lab.example cp2",
                "10.1.0.21\tw1.lab.example w1",
            ]
        );
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(!text.contains("127.0.1.1"), "the node name must resolve to its node IP:\n{text}");
    }
}
