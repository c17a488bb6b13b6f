//! The CNI manifest: Flannel with its VXLAN backend, rendered for the init
//! control plane, which applies it with `kubectl apply -f` right after
//! `kubeadm init` so the cluster has pod networking without a human.
//!
//! Why Flannel: one DaemonSet, no CRDs, no operator, little memory on a Pi,
//! multi-arch images, and VXLAN needs nothing from the LAN (no BGP, no L2
//! adjacency beyond UDP 8472 between nodes). `flanneld --kube-subnet-mgr`
//! takes each node's `spec.podCIDR`, which kube-controller-manager allocates
//! from kubeadm's `networking.podSubnet`; net-conf.json's `Network` must be
//! that same subnet, so it is rendered from node.yaml's `cluster.pod_subnet`
//! (the card is the source of truth on the node, not the image).
//!
//! The template is upstream's manifest (its header names the source and
//! version); bump the images together with it. A test checks that the
//! template's header, its source URL and [`FLANNEL_IMAGE`] name one version.

use serde::Serialize;

use crate::cluster::Role;
use crate::node::NodeConfig;

use super::template::{self, FLANNEL};
use super::{RenderError, header};

/// The directory of CNI manifests on the node. The init control plane's agent
/// applies every `*.yaml` in it, in name order, after `kubeadm init`.
pub const CNI_DIR: &str = "/etc/piha/cni";
/// The rendered Flannel manifest, in [`CNI_DIR`].
pub const FLANNEL_MANIFEST: &str = "/etc/piha/cni/10-flannel.yaml";

/// flanneld (also used by the init container that installs the CNI config).
/// The registry upstream's v0.27 manifests name (the same image is also on
/// Docker Hub, whose anonymous pull limit a cluster behind one address hits easily).
pub(crate) const FLANNEL_IMAGE: &str = "ghcr.io/flannel-io/flannel:v0.27.4";
/// The `flannel` CNI plugin binary, copied to /opt/cni/bin by an init container.
pub(crate) const FLANNEL_CNI_PLUGIN_IMAGE: &str = "ghcr.io/flannel-io/flannel-cni-plugin:v1.8.0-flannel1";

#[derive(Serialize)]
struct Data {
    header: String,
    network: String,
    flannel_image: &'static str,
    cni_plugin_image: &'static str,
}

/// The Flannel manifest (several YAML documents) on the init control plane;
/// `None` on every other node: the manifest is applied once, cluster-wide, and
/// its DaemonSet then runs on every node that joins.
pub(crate) fn flannel(cfg: &NodeConfig) -> Result<Option<String>, RenderError> {
    if cfg.node.role != Role::ControlPlane || !cfg.node.init {
        return Ok(None);
    }
    let data = Data {
        header: header("#", cfg),
        network: cfg.cluster.pod_subnet.to_string(),
        flannel_image: FLANNEL_IMAGE,
        cni_plugin_image: FLANNEL_CNI_PLUGIN_IMAGE,
    };
    template::render(FLANNEL, &data).map(Some)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde::Deserialize;

    use crate::cluster::ClusterFile;
    use crate::node::{NetworkRenderer, NodeConfig};
    use crate::render::template::FLANNEL;
    use crate::render::testing::{cluster, node, secrets};
    use crate::render::{node_files, role_files};

    use super::{CNI_DIR, FLANNEL_CNI_PLUGIN_IMAGE, FLANNEL_IMAGE, FLANNEL_MANIFEST, flannel};

    /// The upstream Flannel release the template is taken from.
    const FLANNEL_VERSION: &str = "v0.27.4";

    const EXAMPLES: [(&str, &str); 2] = [
        ("examples/homelab.yaml", include_str!("../../../examples/homelab.yaml")),
        ("examples/qemu-lab.yaml", include_str!("../../../examples/qemu-lab.yaml")),
    ];

    /// Every document of `text`, as YAML values.
    fn documents(text: &str) -> Vec<yaml_serde::Value> {
        yaml_serde::Deserializer::from_str(text)
            .enumerate()
            .map(|(i, de)| yaml_serde::Value::deserialize(de).unwrap_or_else(|e| panic!("document {i}: {e}\n{text}")))
            .collect()
    }

    fn str_at<'a>(v: &'a yaml_serde::Value, path: &[&str]) -> &'a str {
        let mut cur = v;
        for key in path {
            cur = cur.get(*key).unwrap_or_else(|| panic!("no {key} in {path:?}"));
        }
        cur.as_str().unwrap_or_else(|| panic!("{path:?} is not a string"))
    }

    fn by_kind<'a>(docs: &'a [yaml_serde::Value], kind: &str) -> &'a yaml_serde::Value {
        docs.iter()
            .find(|d| str_at(d, &["kind"]) == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    /// The ConfigMap's `net-conf.json`, parsed.
    fn net_conf(docs: &[yaml_serde::Value]) -> serde_json::Value {
        let text = str_at(by_kind(docs, "ConfigMap"), &["data", "net-conf.json"]);
        serde_json::from_str(text).unwrap_or_else(|e| panic!("net-conf.json: {e}\n{text}"))
    }

    fn init_node(cluster: &ClusterFile) -> NodeConfig {
        let init = cluster.init_node().expect("an init control plane");
        NodeConfig::for_node(cluster, &init.name, NetworkRenderer::Networkd).expect("node")
    }

    #[test]
    fn the_manifest_is_upstreams_documents_in_order() {
        let text = flannel(&node("cp2", NetworkRenderer::Networkd))
            .expect("renders")
            .expect("init control plane");
        assert!(text.starts_with("# Generated by piha"), "{text}");
        let docs = documents(&text);
        let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, &["kind"])).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ClusterRole",
                "ClusterRoleBinding",
                "ServiceAccount",
                "ConfigMap",
                "DaemonSet"
            ]
        );
        for d in &docs {
            assert_eq!(str_at(d, &["metadata", "labels", "k8s-app"]), "flannel", "{d:?}");
        }
        assert_eq!(str_at(&docs[0], &["metadata", "name"]), "kube-flannel");
        assert_eq!(
            str_at(&docs[0], &["metadata", "labels", "pod-security.kubernetes.io/enforce"]),
            "privileged"
        );

        let cni: serde_json::Value =
            serde_json::from_str(str_at(by_kind(&docs, "ConfigMap"), &["data", "cni-conf.json"])).expect("cni-conf.json is JSON");
        assert_eq!(cni["plugins"][0]["type"], "flannel");
        assert_eq!(net_conf(&docs)["Backend"]["Type"], "vxlan");

        let pod = &by_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
        assert_eq!(str_at(&pod["tolerations"][0], &["operator"]), "Exists");
        let flanneld = &pod["containers"][0];
        assert_eq!(str_at(flanneld, &["image"]), FLANNEL_IMAGE);
        let args: Vec<&str> = flanneld["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(args, ["--ip-masq", "--kube-subnet-mgr"]);
        let init: Vec<(&str, &str)> = pod["initContainers"]
            .as_sequence()
            .expect("init containers")
            .iter()
            .map(|c| (str_at(c, &["name"]), str_at(c, &["image"])))
            .collect();
        assert_eq!(
            init,
            [("install-cni-plugin", FLANNEL_CNI_PLUGIN_IMAGE), ("install-cni", FLANNEL_IMAGE)]
        );
    }

    #[test]
    fn images_are_pinned_to_the_version_the_template_names() {
        assert!(FLANNEL_IMAGE.ends_with(&format!(":{FLANNEL_VERSION}")));
        assert!(
            FLANNEL.text.contains(&format!("# Flannel {FLANNEL_VERSION} ")),
            "bump the template's source comment too"
        );
        assert!(
            FLANNEL
                .text
                .contains(&format!("releases/download/{FLANNEL_VERSION}/kube-flannel.yml"))
        );
        assert!(!FLANNEL_CNI_PLUGIN_IMAGE.ends_with(":latest"));
    }

    #[test]
    fn network_is_the_clusters_pod_subnet_for_both_examples() {
        for (path, text) in EXAMPLES {
            let cluster = ClusterFile::parse(Path::new(path), text).expect("example parses");
            let cfg = init_node(&cluster);
            let manifest = flannel(&cfg).expect("renders").expect("init control plane");
            assert_eq!(
                net_conf(&documents(&manifest))["Network"],
                cluster.kubernetes.pod_subnet.to_string(),
                "{path}"
            );
        }
    }

    #[test]
    fn network_follows_a_non_default_pod_subnet() {
        let mut c = cluster();
        c.kubernetes.pod_subnet = "10.32.0.0/16".parse().expect("subnet");
        let manifest = flannel(&init_node(&c)).expect("renders").expect("init control plane");
        assert_eq!(net_conf(&documents(&manifest))["Network"], "10.32.0.0/16");
    }

    #[test]
    fn only_the_init_control_plane_gets_the_manifest() {
        assert!(FLANNEL_MANIFEST.starts_with(&format!("{CNI_DIR}/")));
        for (name, expected) in [("cp2", true), ("cp1", false), ("w1", false), ("lb1", false)] {
            let cfg = node(name, NetworkRenderer::Networkd);
            assert_eq!(flannel(&cfg).expect("renders").is_some(), expected, "{name}");
            let s = (name != "lb1").then(secrets);
            let role: Vec<String> = role_files(&cfg, s.as_ref()).expect("renders").into_iter().map(|f| f.path).collect();
            assert_eq!(role.iter().any(|p| p == FLANNEL_MANIFEST), expected, "{name}: {role:?}");
            let all = node_files(&cfg, s.as_ref()).expect("renders");
            let cni: Vec<_> = all.iter().filter(|f| f.path.starts_with(CNI_DIR)).collect();
            assert_eq!(cni.len(), usize::from(expected), "{name}");
            if let Some(f) = cni.first() {
                assert_eq!(f.mode, 0o644, "no secrets in it");
            }
        }
    }
}
