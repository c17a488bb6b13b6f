//! The control plane's side of LVS direct routing: the VIP file and the port
//! of its health endpoint.
//!
//! The realServer unit (shipped in `overlays/`) reads the VIP file as an
//! environment file, puts `VIP/32` on `lo` and sets `arp_ignore=1`/
//! `arp_announce=2` on `all` and `lo`. The agent starts the unit only once the
//! node's own API server answers (after `kubeadm join` on a joining control
//! plane, or the join would talk to itself through `lo`).
//!
//! The health endpoint (`piha-apicheck.service`, also in `overlays/`) reads the
//! same file: it answers the directors' keepalived 200 only while `VIP/32` is
//! on `lo` and the API server on `API_PORT` is ready.

use crate::cluster::Role;
use crate::node::NodeConfig;

/// The TCP port of every control plane's health endpoint (piha-apicheck.service
/// listens on it, the directors' keepalived checks it). Outside the ports
/// Kubernetes uses (6443, 2379-2380, 10248-10260, NodePorts 30000-32767) and
/// haproxy's frontend (8443); validation refuses it as `api.port`.
pub const APICHECK_PORT: u16 = 6444;

/// `VIP=<vip>\nAPI_PORT=<port>\n` on control planes; `None` elsewhere (workers
/// never get the VIP, directors own it on their NIC through keepalived).
pub(crate) fn vip_env(cfg: &NodeConfig) -> Option<String> {
    (cfg.node.role == Role::ControlPlane).then(|| format!("VIP={}\nAPI_PORT={}\n", cfg.cluster.vip, cfg.cluster.api_port))
}

#[cfg(test)]
mod tests {
    use crate::node::NetworkRenderer;
    use crate::render::testing::node;

    use super::vip_env;

    #[test]
    fn only_control_planes_get_the_vip_and_the_api_port() {
        assert_eq!(
            vip_env(&node("cp1", NetworkRenderer::Networkd)).as_deref(),
            Some("VIP=10.1.0.100\nAPI_PORT=6443\n")
        );
        assert_eq!(vip_env(&node("w1", NetworkRenderer::Networkd)), None);
        assert_eq!(vip_env(&node("lb1", NetworkRenderer::Networkd)), None);
    }
}
