//! The container runtime's configuration: systemd cgroups for containerd or
//! CRI-O, matching the kubelet's `cgroupDriver: systemd`.

use serde::Serialize;

use crate::cluster::{Role, Runtime};
use crate::node::NodeConfig;

use super::template::{self, CONTAINERD, CRIO};
use super::{CONTAINERD_CONFIG, CRIO_CONFIG, RenderError, RenderedFile, header};

#[derive(Serialize)]
struct Data {
    header: String,
}

/// containerd's `/etc/containerd/config.toml`.
pub(crate) fn containerd(cfg: &NodeConfig) -> Result<String, RenderError> {
    template::render(CONTAINERD, &Data { header: header("#", cfg) })
}

/// CRI-O's drop-in `/etc/crio/crio.conf.d/10-piha.conf`.
pub(crate) fn crio(cfg: &NodeConfig) -> Result<String, RenderError> {
    template::render(CRIO, &Data { header: header("#", cfg) })
}

/// The runtime's file for this node, or `None` on a director (no runtime).
pub(crate) fn file(cfg: &NodeConfig) -> Result<Option<RenderedFile>, RenderError> {
    if cfg.node.role == Role::Director {
        return Ok(None);
    }
    Ok(Some(match cfg.cluster.runtime {
        Runtime::Containerd => RenderedFile::new(CONTAINERD_CONFIG, 0o644, containerd(cfg)?),
        Runtime::Crio => RenderedFile::new(CRIO_CONFIG, 0o644, crio(cfg)?),
    }))
}

#[cfg(test)]
mod tests {
    use crate::cluster::Runtime;
    use crate::node::NetworkRenderer;
    use crate::render::testing::node;
    use crate::render::{CONTAINERD_CONFIG, CRIO_CONFIG};

    use super::file;

    #[test]
    fn containerd_uses_systemd_cgroups() {
        let f = file(&node("cp1", NetworkRenderer::Networkd))
            .expect("renders")
            .expect("control planes run a runtime");
        assert_eq!(f.path, CONTAINERD_CONFIG);
        assert!(f.contents.contains("version = 2\n"));
        assert!(f.contents.contains("SystemdCgroup = true\n"));
    }

    #[test]
    fn crio_uses_systemd_cgroups() {
        let mut cfg = node("w1", NetworkRenderer::Netplan);
        cfg.cluster.runtime = Runtime::Crio;
        let f = file(&cfg).expect("renders").expect("workers run a runtime");
        assert_eq!(f.path, CRIO_CONFIG);
        assert!(f.contents.contains("[crio.runtime]\ncgroup_manager = \"systemd\"\n"));
        assert!(!f.contents.contains("\nconmon_cgroup"), "deprecated: {}", f.contents);
    }

    #[test]
    fn directors_have_no_runtime() {
        assert_eq!(file(&node("lb1", NetworkRenderer::Networkd)).expect("renders"), None);
    }
}
