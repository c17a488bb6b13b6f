//! The `kubernetes` section: the version, kube-proxy's mode and the pod subnet's size.

use super::Report;
use crate::cluster::{ClusterFile, ProxyMode, Role};
use crate::k8s::{self, NFTABLES_SINCE_MINOR, Version};

/// The size every node's share of the pod subnet has: kube-controller-manager's
/// `--node-cidr-mask-size`, default 24.
const PER_NODE_POD_PREFIX: u8 = 24;

pub(super) fn check_cluster(r: &mut Report, c: &ClusterFile) {
    let k = &c.kubernetes;
    check_version(r, "kubernetes.version", k.version);
    check_proxy_mode(r, "kubernetes.proxy_mode", k.proxy_mode, k.version);
    check_pod_subnet_size(r, c);
}

/// The version's syntax was checked when the file was parsed; here, support.
pub(super) fn check_version(r: &mut Report, path: &str, version: Version) {
    if let Err(e) = version.supported() {
        r.error(path, e.to_string(), k8s::version_fix());
    }
}

/// Below the minor where kube-proxy's nftables mode is beta, it is an alpha
/// feature gate piha does not turn on. An unsupported version is reported
/// by [`check_version`] alone.
fn check_proxy_mode(r: &mut Report, path: &str, mode: ProxyMode, version: Version) {
    if mode == ProxyMode::Nftables && version.is_supported() && !version.has_nftables_proxy() {
        r.error(
            path,
            format!(
                "kube-proxy's nftables mode needs Kubernetes 1.{NFTABLES_SINCE_MINOR} or later; {version} only has it as an alpha feature"
            ),
            format!("use `proxy_mode: iptables`, or kubernetes.version 1.{NFTABLES_SINCE_MINOR} or later"),
        );
    }
}

/// kube-controller-manager gives every node that runs pods (control planes
/// and workers) a /24 of the pod subnet, and flannel needs one per node.
fn check_pod_subnet_size(r: &mut Report, c: &ClusterFile) {
    let pod = c.kubernetes.pod_subnet;
    let nodes = c.nodes.iter().filter(|n| n.role != Role::Director).count();
    let available: u64 = if pod.prefix_len() >= PER_NODE_POD_PREFIX {
        0
    } else {
        1u64 << (PER_NODE_POD_PREFIX - pod.prefix_len())
    };
    if (available as usize) < nodes.max(1) {
        r.error(
            "kubernetes.pod_subnet",
            format!("{pod} holds {available} per-node /24 pod range(s), but {nodes} node(s) run pods"),
            "use a larger pod subnet, e.g. 10.244.0.0/16",
        );
    }
}
