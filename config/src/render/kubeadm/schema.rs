//! The kubeadm configuration file's documents as typed structs: what
//! [`super::config`] writes and [`parse`] reads back. Field names follow the
//! API references:
//! <https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/>,
//! <https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta3/>.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::k8s::KubeadmApi;

/// The `kind:` of each document piha writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    InitConfiguration,
    ClusterConfiguration,
    JoinConfiguration,
    KubeletConfiguration,
    KubeProxyConfiguration,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::InitConfiguration,
        Kind::ClusterConfiguration,
        Kind::JoinConfiguration,
        Kind::KubeletConfiguration,
        Kind::KubeProxyConfiguration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InitConfiguration => "InitConfiguration",
            Kind::ClusterConfiguration => "ClusterConfiguration",
            Kind::JoinConfiguration => "JoinConfiguration",
            Kind::KubeletConfiguration => "KubeletConfiguration",
            Kind::KubeProxyConfiguration => "KubeProxyConfiguration",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `apiVersion:` of the KubeletConfiguration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KubeletApi {
    #[serde(rename = "kubelet.config.k8s.io/v1beta1")]
    V1beta1,
}

/// The `apiVersion:` of the KubeProxyConfiguration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KubeProxyApi {
    #[serde(rename = "kubeproxy.config.k8s.io/v1alpha1")]
    V1alpha1,
}

/// `InitConfiguration`: this node's part of `kubeadm init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitConfiguration {
    pub api_version: KubeadmApi,
    pub kind: Kind,
    pub bootstrap_tokens: Vec<BootstrapToken>,
    pub node_registration: NodeRegistration,
    #[serde(rename = "localAPIEndpoint")]
    pub local_api_endpoint: ApiEndpoint,
}

/// A bootstrap token kubeadm init creates in the cluster (usages and groups
/// keep kubeadm's defaults: signing + authentication, the default node group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapToken {
    pub token: String,
    pub description: String,
    pub ttl: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRegistration {
    pub name: String,
    pub cri_socket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_extra_args: Option<ExtraArgs>,
}

/// Extra command-line arguments: a map in v1beta3, a list of name/value pairs
/// in v1beta4 (which allows duplicates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExtraArgs {
    List(Vec<Arg>),
    Map(BTreeMap<String, String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arg {
    pub name: String,
    pub value: String,
}

impl ExtraArgs {
    pub(super) fn new(api: KubeadmApi, args: &[(&str, String)]) -> ExtraArgs {
        match api {
            KubeadmApi::V1beta3 => ExtraArgs::Map(args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()),
            KubeadmApi::V1beta4 => ExtraArgs::List(
                args.iter()
                    .map(|(k, v)| Arg {
                        name: k.to_string(),
                        value: v.clone(),
                    })
                    .collect(),
            ),
        }
    }
}

/// Where this node's API server listens and what it advertises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiEndpoint {
    pub advertise_address: Ipv4Addr,
    pub bind_port: u16,
}

/// `ClusterConfiguration`: cluster-wide settings, given at init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfiguration {
    pub api_version: KubeadmApi,
    pub kind: Kind,
    pub cluster_name: String,
    pub kubernetes_version: String,
    pub control_plane_endpoint: String,
    pub api_server: ApiServer,
    pub networking: Networking,
    /// v1beta4 only: `ECDSA-P256` when the cluster's keys are ECDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
    /// v1beta3 only: `PublicKeysECDSA` is how it asks for ECDSA keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_gates: BTreeMap<String, bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiServer {
    #[serde(rename = "certSANs")]
    pub cert_sans: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Networking {
    pub pod_subnet: String,
    pub service_subnet: String,
}

/// `JoinConfiguration`: `kubeadm join` for workers and control planes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinConfiguration {
    pub api_version: KubeadmApi,
    pub kind: Kind,
    pub node_registration: NodeRegistration,
    pub discovery: Discovery,
    /// Present on control planes only. No `certificateKey`: the CAs are on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<JoinControlPlane>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Discovery {
    pub bootstrap_token: BootstrapTokenDiscovery,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapTokenDiscovery {
    pub api_server_endpoint: String,
    pub token: String,
    pub ca_cert_hashes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinControlPlane {
    #[serde(rename = "localAPIEndpoint")]
    pub local_api_endpoint: ApiEndpoint,
}

/// `KubeletConfiguration`: `cgroupDriver: systemd`, matching the runtime (CRI-O
/// with the kubelet on cgroupfs never starts the pod sandbox), and
/// `rotateCertificates: true` (kubeadm's default, written out so it is seen
/// to stay on): the kubelet renews its own client certificate before it
/// expires, which no certificate renewal of kubeadm's does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletConfiguration {
    pub api_version: KubeletApi,
    pub kind: Kind,
    pub cgroup_driver: String,
    #[serde(default)]
    pub rotate_certificates: bool,
}

/// `KubeProxyConfiguration`: iptables or nftables, never IPVS (an IPVS-mode
/// kube-proxy deletes IPVS rules it did not create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeProxyConfiguration {
    pub api_version: KubeProxyApi,
    pub kind: Kind,
    pub mode: String,
}

/// One document of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Init(InitConfiguration),
    Cluster(ClusterConfiguration),
    Join(JoinConfiguration),
    Kubelet(KubeletConfiguration),
    KubeProxy(KubeProxyConfiguration),
}

impl Document {
    pub fn kind(&self) -> Kind {
        match self {
            Document::Init(d) => d.kind,
            Document::Cluster(d) => d.kind,
            Document::Join(d) => d.kind,
            Document::Kubelet(d) => d.kind,
            Document::KubeProxy(d) => d.kind,
        }
    }

    pub(super) fn to_yaml(&self) -> Result<String, yaml_serde::Error> {
        match self {
            Document::Init(d) => yaml_serde::to_string(d),
            Document::Cluster(d) => yaml_serde::to_string(d),
            Document::Join(d) => yaml_serde::to_string(d),
            Document::Kubelet(d) => yaml_serde::to_string(d),
            Document::KubeProxy(d) => yaml_serde::to_string(d),
        }
    }
}

/// Why a kubeadm file could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("document {index}: {error}")]
    Yaml { index: usize, error: yaml_serde::Error },
    #[error("document {index}: no `kind`")]
    NoKind { index: usize },
    #[error("document {index}: unexpected kind `{kind}`")]
    UnknownKind { index: usize, kind: String },
}

/// Reads a file written by [`super::config`] back into its documents (the agent and
/// the tests use it to check what a file asks kubeadm for).
pub fn parse(text: &str) -> Result<Vec<Document>, ParseError> {
    let mut docs = Vec::new();
    for (index, de) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = yaml_serde::Value::deserialize(de).map_err(|error| ParseError::Yaml { index, error })?;
        let kind = value
            .get("kind")
            .and_then(yaml_serde::Value::as_str)
            .ok_or(ParseError::NoKind { index })?;
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == kind) else {
            let kind = kind.to_string();
            return Err(ParseError::UnknownKind { index, kind });
        };
        fn typed<T: DeserializeOwned>(index: usize, value: yaml_serde::Value) -> Result<T, ParseError> {
            yaml_serde::from_value(value).map_err(|error| ParseError::Yaml { index, error })
        }
        docs.push(match kind {
            Kind::InitConfiguration => Document::Init(typed(index, value)?),
            Kind::ClusterConfiguration => Document::Cluster(typed(index, value)?),
            Kind::JoinConfiguration => Document::Join(typed(index, value)?),
            Kind::KubeletConfiguration => Document::Kubelet(typed(index, value)?),
            Kind::KubeProxyConfiguration => Document::KubeProxy(typed(index, value)?),
        });
    }
    Ok(docs)
}
