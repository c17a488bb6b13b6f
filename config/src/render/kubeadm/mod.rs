//! The kubeadm configuration, as typed structs serialized to a multi-document
//! YAML file (`kubeadm init|join --config /etc/piha/kubeadm.yaml`).
//!
//! `kubeadm.k8s.io/v1beta4` for Kubernetes ≥ 1.31, `v1beta3` below
//! (`crate::k8s`); the documents' types are in `schema`.
//!
//! The CAs and service-account keys are pre-placed under /etc/kubernetes/pki
//! from the card, so nothing here uploads or downloads certificates: no
//! `certificateKey`, no `--upload-certs`, and a control plane joins with only
//! the bootstrap token and the CA hash.

mod schema;

use std::collections::BTreeMap;

use crate::cluster::{KeyAlgorithm, ProxyMode, Role};
use crate::k8s::{KubeadmApi, Version};
use crate::node::NodeConfig;
use crate::secrets::{is_bootstrap_token, is_ca_cert_hash};

use super::hosts::api_name;
use super::{JoinSecrets, RenderError, header};

pub use schema::{
    ApiEndpoint, ApiServer, Arg, BootstrapToken, BootstrapTokenDiscovery, ClusterConfiguration, Discovery, Document, ExtraArgs,
    InitConfiguration, JoinConfiguration, JoinControlPlane, Kind, KubeProxyApi, KubeProxyConfiguration, KubeletApi, KubeletConfiguration,
    Networking, NodeRegistration, ParseError, parse,
};

/// What kubeadm does on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `kubeadm init` on the init control plane.
    Init,
    /// `kubeadm join` as a control plane.
    JoinControlPlane,
    /// `kubeadm join` as a worker.
    JoinWorker,
}

/// The kubeadm action for this node; `None` on a director.
pub fn action(cfg: &NodeConfig) -> Option<Action> {
    match (cfg.node.role, cfg.node.init) {
        (Role::ControlPlane, true) => Some(Action::Init),
        (Role::ControlPlane, false) => Some(Action::JoinControlPlane),
        (Role::Worker, _) => Some(Action::JoinWorker),
        (Role::Director, _) => None,
    }
}

/// `VIP:port`: kubeadm's controlPlaneEndpoint and every join's API endpoint.
pub(crate) fn endpoint(cfg: &NodeConfig) -> String {
    format!("{}:{}", cfg.cluster.vip, cfg.cluster.api_port)
}

/// The documents for this node: Init + Cluster + Kubelet + KubeProxy on the
/// init control plane, Join + Kubelet elsewhere.
pub fn documents(cfg: &NodeConfig, secrets: Option<&JoinSecrets>) -> Result<Vec<Document>, RenderError> {
    let Some(action) = action(cfg) else {
        return Err(RenderError::NoKubeadm {
            node: cfg.node.name.clone(),
        });
    };
    let secrets = secrets.ok_or_else(|| RenderError::MissingSecrets {
        node: cfg.node.name.clone(),
        role: cfg.node.role.as_str(),
    })?;
    check_secrets(secrets)?;
    let version = cfg
        .cluster
        .kubernetes_version
        .supported()
        .map_err(|error| RenderError::Version { error })?;
    let api = version.kubeadm_api();
    let kubelet = Document::Kubelet(KubeletConfiguration {
        api_version: KubeletApi::V1beta1,
        kind: Kind::KubeletConfiguration,
        cgroup_driver: "systemd".to_string(),
        rotate_certificates: true,
    });
    if action != Action::Init {
        // kubeadm join takes the kubelet settings from the cluster's
        // kubelet-config ConfigMap (written at init from the document below);
        // it is repeated here so the file says what the node runs with.
        return Ok(vec![Document::Join(join_configuration(cfg, api, action, secrets)), kubelet]);
    }
    if cfg.cluster.proxy_mode == ProxyMode::Nftables && !version.has_nftables_proxy() {
        return Err(RenderError::NftablesTooOld {
            version: version.to_string(),
        });
    }
    let proxy = KubeProxyConfiguration {
        api_version: KubeProxyApi::V1alpha1,
        kind: Kind::KubeProxyConfiguration,
        mode: cfg.cluster.proxy_mode.as_str().to_string(),
    };
    Ok(vec![
        Document::Init(init_configuration(cfg, api, secrets)),
        Document::Cluster(cluster_configuration(cfg, version)),
        kubelet,
        Document::KubeProxy(proxy),
    ])
}

/// Where this node's API server listens: its own address.
fn local_endpoint(cfg: &NodeConfig) -> ApiEndpoint {
    ApiEndpoint {
        advertise_address: cfg.node.address.addr(),
        bind_port: cfg.cluster.api_port,
    }
}

fn node_registration(cfg: &NodeConfig, api: KubeadmApi) -> NodeRegistration {
    NodeRegistration {
        name: cfg.node.name.clone(),
        cri_socket: cfg.cluster.runtime.cri_socket().to_string(),
        // The realServer VIP sits on lo; without a pinned node IP the kubelet
        // may register the VIP as the node's INTERNAL-IP.
        kubelet_extra_args: Some(ExtraArgs::new(api, &[("node-ip", cfg.node.address.addr().to_string())])),
    }
}

fn join_configuration(cfg: &NodeConfig, api: KubeadmApi, action: Action, secrets: &JoinSecrets) -> JoinConfiguration {
    JoinConfiguration {
        api_version: api,
        kind: Kind::JoinConfiguration,
        node_registration: node_registration(cfg, api),
        discovery: Discovery {
            bootstrap_token: BootstrapTokenDiscovery {
                api_server_endpoint: endpoint(cfg),
                token: secrets.token.clone(),
                ca_cert_hashes: vec![secrets.ca_cert_hash.clone()],
            },
        },
        control_plane: (action == Action::JoinControlPlane).then_some(JoinControlPlane {
            local_api_endpoint: local_endpoint(cfg),
        }),
    }
}

fn init_configuration(cfg: &NodeConfig, api: KubeadmApi, secrets: &JoinSecrets) -> InitConfiguration {
    InitConfiguration {
        api_version: api,
        kind: Kind::InitConfiguration,
        bootstrap_tokens: vec![BootstrapToken {
            token: secrets.token.clone(),
            description: format!("piha bootstrap token of cluster {}", cfg.cluster.name),
            // The cluster file's `bootstrap_token_ttl` (default 24h, kubeadm's own),
            // counted from `kubeadm init`; never 0, which kubeadm reads as
            // "no expiry".
            ttl: cfg.cluster.bootstrap_token_ttl.clone(),
        }],
        node_registration: node_registration(cfg, api),
        local_api_endpoint: local_endpoint(cfg),
    }
}

fn cluster_configuration(cfg: &NodeConfig, version: Version) -> ClusterConfiguration {
    let api = version.kubeadm_api();
    let (encryption_algorithm, feature_gates) = match (cfg.cluster.key_algorithm, api) {
        (KeyAlgorithm::Rsa2048, _) => (None, BTreeMap::new()),
        (KeyAlgorithm::EcdsaP256, KubeadmApi::V1beta4) => (Some("ECDSA-P256".to_string()), BTreeMap::new()),
        (KeyAlgorithm::EcdsaP256, KubeadmApi::V1beta3) => (None, BTreeMap::from([("PublicKeysECDSA".to_string(), true)])),
    };
    ClusterConfiguration {
        api_version: api,
        kind: Kind::ClusterConfiguration,
        cluster_name: cfg.cluster.name.clone(),
        kubernetes_version: format!("v{version}"),
        control_plane_endpoint: endpoint(cfg),
        api_server: ApiServer { cert_sans: cert_sans(cfg) },
        networking: Networking {
            pod_subnet: cfg.cluster.pod_subnet.to_string(),
            service_subnet: cfg.cluster.service_subnet.to_string(),
        },
        encryption_algorithm,
        feature_gates,
    }
}

/// The API server certificate's extra names: the VIP and its /etc/hosts name,
/// then every control plane's name and IP (kubeadm adds the node's own, the
/// service IP and `kubernetes.default…` itself).
pub(crate) fn cert_sans(cfg: &NodeConfig) -> Vec<String> {
    let with_domain = |short: String| -> Vec<String> {
        match &cfg.node.domain {
            Some(domain) => vec![format!("{short}.{domain}"), short],
            None => vec![short],
        }
    };
    let mut sans = vec![cfg.cluster.vip.to_string()];
    sans.extend(with_domain(api_name(&cfg.cluster.name)));
    for cp in cfg.control_planes() {
        sans.extend(with_domain(cp.name.clone()));
        sans.push(cp.ip.to_string());
    }
    sans
}

/// The rendered file: a header, then the documents separated by `---`.
pub fn config(cfg: &NodeConfig, secrets: Option<&JoinSecrets>) -> Result<String, RenderError> {
    let docs = documents(cfg, secrets)?;
    let mut text = header("#", cfg);
    text.push_str("# kubeadm configuration. Holds the bootstrap token: keep it 0600.\n");
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&doc.to_yaml().map_err(|error| RenderError::Yaml {
            what: "the kubeadm configuration",
            error,
        })?);
    }
    Ok(text)
}

/// The token and hash must have kubeadm's shapes; anything else would only
/// fail later, on the node, inside kubeadm.
fn check_secrets(s: &JoinSecrets) -> Result<(), RenderError> {
    if !is_bootstrap_token(&s.token) {
        // Never the value: a token one typo away from the real one is a secret too.
        return Err(RenderError::BadSecret {
            file: crate::secrets::BOOTSTRAP_TOKEN.rel,
            found: format!("its value ({} characters, not shown)", s.token.chars().count()),
            expected: "a bootstrap token [a-z0-9]{6}.[a-z0-9]{16}",
        });
    }
    if !is_ca_cert_hash(&s.ca_cert_hash) {
        return Err(RenderError::BadSecret {
            file: crate::secrets::CA_CERT_HASH.rel,
            found: format!("`{}`", crate::problem::clip(&s.ca_cert_hash)),
            expected: "a CA cert hash sha256:<64 lowercase hex digits>",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use crate::cluster::ProxyMode;
    use crate::node::NetworkRenderer;
    use crate::render::testing::{node, secrets};
    use crate::render::{JoinSecrets, RenderError};

    use super::{Action, Document, action, config, documents, parse};

    #[test]
    fn init_node_gets_init_cluster_kubelet_and_proxy() {
        let cfg = node("cp2", NetworkRenderer::Networkd);
        assert_eq!(action(&cfg), Some(Action::Init));
        let docs = documents(&cfg, Some(&secrets())).expect("renders");
        let kinds: Vec<&str> = docs.iter().map(|d| d.kind().as_str()).collect();
        assert_eq!(
            kinds,
            [
                "InitConfiguration",
                "ClusterConfiguration",
                "KubeletConfiguration",
                "KubeProxyConfiguration"
            ]
        );
        let Document::Cluster(cluster) = &docs[1] else {
            panic!("second document is the ClusterConfiguration")
        };
        assert_eq!(cluster.control_plane_endpoint, "10.1.0.100:6443");
        assert_eq!(cluster.kubernetes_version, "v1.34.1");
        assert_eq!(cluster.encryption_algorithm.as_deref(), Some("ECDSA-P256"));
        assert_eq!(
            cluster.api_server.cert_sans,
            [
                "10.1.0.100",
                "lab-api.lab.example",
                "lab-api",
                "cp1.lab.example",
                "cp1",
                "10.1.0.11",
                "cp2.lab.example",
                "cp2",
                "10.1.0.12"
            ]
        );
    }

    #[test]
    fn file_round_trips_through_the_structs() {
        for name in ["cp1", "cp2", "w1"] {
            let cfg = node(name, NetworkRenderer::Networkd);
            let text = config(&cfg, Some(&secrets())).expect("renders");
            let back = parse(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(back, documents(&cfg, Some(&secrets())).expect("renders"), "{name}");
        }
    }

    #[test]
    fn v1beta3_below_1_31_uses_a_map_and_the_ecdsa_gate() {
        let mut cfg = node("cp2", NetworkRenderer::Networkd);
        cfg.cluster.kubernetes_version = "1.30.14".parse().expect("supported");
        cfg.cluster.proxy_mode = ProxyMode::Iptables;
        let text = config(&cfg, Some(&secrets())).expect("renders");
        assert!(text.contains("apiVersion: kubeadm.k8s.io/v1beta3\n"), "{text}");
        assert!(!text.contains("v1beta4"));
        assert!(text.contains("  kubeletExtraArgs:\n    node-ip: 10.1.0.12\n"), "{text}");
        assert!(text.contains("featureGates:\n  PublicKeysECDSA: true\n"), "{text}");
        assert!(!text.contains("encryptionAlgorithm"));
        parse(&text).expect("round trips");
    }

    #[test]
    fn nftables_needs_1_31() {
        let mut cfg = node("cp2", NetworkRenderer::Networkd);
        cfg.cluster.kubernetes_version = "1.30.14".parse().expect("supported");
        let err = documents(&cfg, Some(&secrets())).expect_err("nftables is alpha in 1.30");
        assert!(matches!(err, RenderError::NftablesTooOld { .. }), "{err}");
        assert!(err.to_string().contains("proxy_mode: iptables"), "{err}");
    }

    #[test]
    fn secrets_are_required_and_checked() {
        let cfg = node("w1", NetworkRenderer::Networkd);
        assert!(matches!(documents(&cfg, None), Err(RenderError::MissingSecrets { .. })));
        let bad_token = JoinSecrets {
            token: "ABCDEF.0123456789abcdef".to_string(),
            ..secrets()
        };
        let err = documents(&cfg, Some(&bad_token)).expect_err("uppercase token").to_string();
        assert!(err.contains("secrets/bootstrap-token"), "{err}");
        // A token one typo away from the real one is a secret: never echoed.
        assert!(
            !err.contains("0123456789abcdef") && err.contains("23 characters, not shown"),
            "{err}"
        );
        let bad_hash = JoinSecrets {
            ca_cert_hash: "sha256:abc".to_string(),
            ..secrets()
        };
        let err = documents(&cfg, Some(&bad_hash)).expect_err("short hash").to_string();
        assert!(err.contains("secrets/ca-cert-hash"), "{err}");
    }

    #[test]
    fn directors_have_no_kubeadm_config() {
        let cfg = node("lb1", NetworkRenderer::Networkd);
        assert_eq!(action(&cfg), None);
        assert!(matches!(documents(&cfg, Some(&secrets())), Err(RenderError::NoKubeadm { .. })));
    }
}
