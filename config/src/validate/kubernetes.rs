//! The `kubernetes` section: the version, kube-proxy's mode and the pod subnet's size.

use super::Report;
use crate::cluster::{ClusterFile, ProxyMode, Role, Runtime};
use crate::k8s::{self, NFTABLES_SINCE_MINOR, Version};

/// The size every node's share of the pod subnet has: kube-controller-manager's
/// `--node-cidr-mask-size`, default 24.
const PER_NODE_POD_PREFIX: u8 = 24;

pub(super) fn check_cluster(r: &mut Report, c: &ClusterFile) {
    let k = &c.kubernetes;
    check_version(r, "kubernetes.version", k.version);
    check_proxy_mode(r, "kubernetes.proxy_mode", k.proxy_mode, k.version);
    check_pod_subnet_size(r, c);
    check_bootstrap_token_ttl(r, "kubernetes.bootstrap_token_ttl", &k.bootstrap_token_ttl);
}

/// The first Kubernetes minor that needs containerd 2: 1.35 was the last to
/// support containerd 1.x.
const CONTAINERD_2_SINCE_MINOR: u32 = 36;

/// containerd from the distro's archive must be one the Kubernetes version
/// still supports.
pub(super) fn check_containerd(r: &mut Report, c: &ClusterFile, catalog: &super::Catalog) {
    let v = c.kubernetes.version;
    if c.kubernetes.runtime != Runtime::Containerd || !v.is_supported() || v.minor < CONTAINERD_2_SINCE_MINOR {
        return;
    }
    if let Some(1) = catalog.containerd_major.get(&c.distro) {
        r.error(
            "kubernetes.runtime",
            format!(
                "Kubernetes {v} needs containerd 2.x (1.{} was the last to support 1.x), but {}'s archive ships containerd 1.x",
                CONTAINERD_2_SINCE_MINOR - 1,
                c.distro
            ),
            format!(
                "use `runtime: crio`, or kubernetes.version 1.{} or older, or a distro that ships containerd 2",
                CONTAINERD_2_SINCE_MINOR - 1
            ),
        );
    }
}

/// The shortest and longest bootstrap token lifetime piha accepts.
const TOKEN_TTL_SECONDS: std::ops::RangeInclusive<u64> = 60..=365 * 24 * 3600;

/// `bootstrap_token_ttl`: Go duration syntax limited to hours, minutes and seconds in
/// that order (`24h`, `1h30m`, `90s`), between a minute and a year. Zero,
/// which kubeadm reads as "never expires", is refused.
pub(super) fn check_bootstrap_token_ttl(r: &mut Report, path: &str, ttl: &str) {
    match ttl_seconds(ttl) {
        Some(s) if TOKEN_TTL_SECONDS.contains(&s) => {}
        Some(0) => r.error(
            path,
            format!("`{ttl}` would make the bootstrap token valid forever"),
            "give it a lifetime, e.g. 24h (kubeadm's default); `piha token` makes a new one for later joins",
        ),
        Some(s) => r.error(
            path,
            format!("`{ttl}` is {s} s; piha accepts a minute to a year"),
            "use e.g. 24h (kubeadm's default) or 168h (a week)",
        ),
        None => r.error(
            path,
            format!("`{ttl}` is not a duration of hours, minutes and seconds"),
            "write it like 24h, 90m or 1h30m",
        ),
    }
}

/// Seconds of `24h`, `1h30m`, `90s`; None for anything else.
pub(crate) fn ttl_seconds(ttl: &str) -> Option<u64> {
    let mut rest = ttl;
    let mut total: u64 = 0;
    let mut units = ['h', 'm', 's'].iter();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 || digits > 9 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let unit = rest[digits..].chars().next()?;
        // Each unit at most once, in the order h, m, s.
        loop {
            let u = *units.next()?;
            if u == unit {
                break;
            }
        }
        total += n * match unit {
            'h' => 3600,
            'm' => 60,
            _ => 1,
        };
        rest = &rest[digits + 1..];
    }
    Some(total)
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

#[cfg(test)]
mod tests {
    use super::ttl_seconds;

    #[test]
    fn bootstrap_token_ttl_is_hours_minutes_seconds_in_order() {
        for (ttl, secs) in [("24h", 86_400), ("90m", 5_400), ("1h30m", 5_400), ("1h0m30s", 3_630), ("0s", 0)] {
            assert_eq!(ttl_seconds(ttl), Some(secs), "{ttl}");
        }
        for bad in ["", "1d", "24", "h", "30m1h", "1h1h", "-1h", "1.5h", "24h ", "9999999999h"] {
            assert_eq!(ttl_seconds(bad), None, "{bad:?}");
        }
    }
}
