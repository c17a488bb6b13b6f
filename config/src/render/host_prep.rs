//! Kernel modules and sysctls, written for boot and applied now by the agent
//! (`modprobe` each of [`modules`], `sysctl --system`).
//!
//! The realServer's `arp_ignore`/`arp_announce` are not here: the realServer
//! unit sets them at runtime, on `all` and `lo`, and undoes them when stopped.

use crate::cluster::Role;
use crate::node::NodeConfig;

use super::header;

/// Kubernetes nodes: overlayfs for container images, br_netfilter so bridged
/// pod traffic passes iptables/nftables, conntrack for kube-proxy, and the IPVS
/// modules (DESIGN.md host-prep; kube-proxy itself does not run in IPVS mode).
pub(crate) const KUBERNETES_MODULES: [&str; 7] = [
    "overlay",
    "br_netfilter",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "nf_conntrack",
];

/// Directors run LVS only: IPVS with the schedulers keepalived may use, and conntrack.
pub(crate) const DIRECTOR_MODULES: [&str; 5] = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack"];

/// The sysctls kubeadm's preflight checks require
/// (<https://kubernetes.io/docs/setup/production-environment/container-runtimes/#prerequisite-ipv4-forwarding-optional>).
pub(crate) const KUBERNETES_SYSCTLS: [(&str, &str); 3] = [
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.ipv4.ip_forward", "1"),
];

/// Directors: IPVS's handling of connections whose real server is gone
/// (<https://docs.kernel.org/networking/ipvs-sysctl.html>).
///
/// `expire_nodest_conn=1`: when keepalived removes a control plane, IPVS
/// expires each connection that was scheduled to it at that connection's next
/// packet. By default IPVS keeps the entry and silently drops its packets
/// until the entry times out (15 minutes for an established TCP connection),
/// so a client with a long connection (a watch, kubectl logs -f) hangs that
/// long instead of failing at once and reconnecting, to a live control plane.
///
/// `expire_quiescent_template=1`: the same for persistence templates when a
/// real server's weight drops to 0. piha's virtual server uses neither
/// persistence nor weight 0 today; set so that adding either later cannot pin
/// clients to a control plane that left the pool.
///
/// Both exist only once `ip_vs` is loaded: the agent loads the modules before
/// applying the sysctls, and at boot systemd-sysctl runs after
/// systemd-modules-load.
pub(crate) const DIRECTOR_SYSCTLS: [(&str, &str); 2] = [
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
];

/// The modules this node loads now and at boot.
pub fn modules(cfg: &NodeConfig) -> &'static [&'static str] {
    match cfg.node.role {
        Role::ControlPlane | Role::Worker => &KUBERNETES_MODULES,
        Role::Director => &DIRECTOR_MODULES,
    }
}

/// The sysctls this node sets (directors: IPVS's only; LVS-DR needs no
/// forwarding).
pub(crate) fn sysctls(cfg: &NodeConfig) -> &'static [(&'static str, &'static str)] {
    match cfg.node.role {
        Role::ControlPlane | Role::Worker => &KUBERNETES_SYSCTLS,
        Role::Director => &DIRECTOR_SYSCTLS,
    }
}

/// `/etc/modules-load.d/piha-k8s.conf`: one module per line.
pub(crate) fn modules_load(cfg: &NodeConfig) -> String {
    let mut text = header("#", cfg);
    for m in modules(cfg) {
        text.push_str(m);
        text.push('\n');
    }
    text
}

/// `/etc/sysctl.d/90-piha-k8s.conf`, or `None` when the node sets no sysctls.
pub(crate) fn sysctl(cfg: &NodeConfig) -> Option<String> {
    let sysctls = sysctls(cfg);
    if sysctls.is_empty() {
        return None;
    }
    let mut text = header("#", cfg);
    for (key, value) in sysctls {
        text.push_str(&format!("{key} = {value}\n"));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use crate::node::NetworkRenderer;
    use crate::render::testing::node;

    use super::{modules_load, sysctl};

    #[test]
    fn kubernetes_nodes_load_br_netfilter_and_forward() {
        let cp = node("cp1", NetworkRenderer::Networkd);
        assert!(modules_load(&cp).lines().any(|l| l == "br_netfilter"));
        let s = sysctl(&cp).expect("control planes set sysctls");
        assert!(s.contains("net.ipv4.ip_forward = 1\n"));
        assert!(s.contains("net.bridge.bridge-nf-call-iptables = 1\n"));
        assert!(!s.contains("arp_"), "realServer sysctls belong to the realServer unit");
    }

    #[test]
    fn directors_load_ipvs_only_and_expire_connections_to_removed_servers() {
        let lb = node("lb1", NetworkRenderer::Networkd);
        let m = modules_load(&lb);
        assert!(m.lines().any(|l| l == "ip_vs"));
        assert!(!m.lines().any(|l| l == "br_netfilter" || l == "overlay"));
        let s = sysctl(&lb).expect("directors set IPVS sysctls");
        let settings: Vec<&str> = s.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            settings,
            ["net.ipv4.vs.expire_nodest_conn = 1", "net.ipv4.vs.expire_quiescent_template = 1"]
        );
    }
}
