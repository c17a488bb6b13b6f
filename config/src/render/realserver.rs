//! The realServer VIP file on control planes. The realServer unit (shipped in
//! `overlays/`) reads it as an environment file, puts `VIP/32` on `lo` and sets
//! `arp_ignore=1`/`arp_announce=2` on `all` and `lo`. The agent starts the unit
//! only once the node's own API server answers (after `kubeadm join` on a
//! joining control plane, or the join would talk to itself through `lo`).

use crate::cluster::Role;
use crate::node::NodeConfig;

/// `VIP=<vip>\n` on control planes; `None` elsewhere (workers never get the VIP,
/// directors own it on their NIC through keepalived).
pub(crate) fn vip_env(cfg: &NodeConfig) -> Option<String> {
    (cfg.node.role == Role::ControlPlane).then(|| format!("VIP={}\n", cfg.cluster.vip))
}

#[cfg(test)]
mod tests {
    use crate::node::NetworkRenderer;
    use crate::render::testing::node;

    use super::vip_env;

    #[test]
    fn only_control_planes_get_the_vip() {
        assert_eq!(
            vip_env(&node("cp1", NetworkRenderer::Networkd)).as_deref(),
            Some("VIP=10.1.0.100\n")
        );
        assert_eq!(vip_env(&node("w1", NetworkRenderer::Networkd)), None);
        assert_eq!(vip_env(&node("lb1", NetworkRenderer::Networkd)), None);
    }
}
