//! The static network configuration: systemd-networkd on Debian, netplan on
//! Ubuntu (`cfg.cluster.network_renderer` says which the image has).
//!
//! The NIC is matched by MAC when the cluster file gives one, else by name,
//! else every Ethernet-looking NIC (`en*`/`eth*`) gets the address: fine for a
//! board with one NIC; a machine with several must name one.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::node::{NetworkRenderer, NodeConfig};

use super::template::{self, NETWORKD};
use super::{NETPLAN_FILE, NETWORKD_FILE, RenderError, RenderedFile, check_word, header};

/// networkd's match when the cluster file names neither interface nor MAC.
pub(crate) const DEFAULT_NAME_MATCH: &str = "en* eth*";
/// netplan's equivalent: one glob, `en*` and `eth*` (not `erspan0` & co.).
pub(crate) const DEFAULT_NETPLAN_NAME_MATCH: &str = "e[nt]*";
/// netplan renames a MAC-matched NIC to this, so it has a name known in
/// advance (keepalived's VRRP interface on a director).
pub(crate) const MAC_MATCHED_NAME: &str = "piha0";
/// netplan's id for a NIC matched by the default glob.
const GLOB_MATCH_ID: &str = "piha-lan";

/// The network file(s) for this node.
pub(crate) fn files(cfg: &NodeConfig) -> Result<Vec<RenderedFile>, RenderError> {
    check_fields(cfg)?;
    Ok(match cfg.cluster.network_renderer {
        NetworkRenderer::Networkd => vec![RenderedFile::new(NETWORKD_FILE, 0o644, networkd(cfg)?)],
        // netplan warns about (and future versions refuse) world-readable files.
        NetworkRenderer::Netplan => vec![RenderedFile::new(NETPLAN_FILE, 0o600, netplan(cfg)?)],
    })
}

fn check_fields(cfg: &NodeConfig) -> Result<(), RenderError> {
    if let Some(i) = &cfg.node.interface {
        check_word("node.interface", i, "a network interface name")?;
    }
    if let Some(m) = &cfg.node.mac {
        check_word("node.mac", m, "a MAC address")?;
    }
    if let Some(d) = &cfg.node.domain {
        check_word("node.domain", d, "a DNS search domain")?;
    }
    Ok(())
}

#[derive(Serialize)]
struct NetworkdData<'a> {
    header: String,
    match_line: String,
    address: String,
    gateway: String,
    dns: Vec<String>,
    domain: Option<&'a str>,
}

/// `/etc/systemd/network/10-piha.network`.
pub(crate) fn networkd(cfg: &NodeConfig) -> Result<String, RenderError> {
    check_fields(cfg)?;
    let n = &cfg.node;
    let match_line = match (&n.mac, &n.interface) {
        (Some(mac), _) => format!("MACAddress={mac}"),
        (None, Some(name)) => format!("Name={name}"),
        (None, None) => format!("Name={DEFAULT_NAME_MATCH}"),
    };
    let data = NetworkdData {
        header: header("#", cfg),
        match_line,
        address: n.address.to_string(),
        gateway: n.gateway.to_string(),
        dns: n.dns.iter().map(Ipv4Addr::to_string).collect(),
        domain: n.domain.as_deref(),
    };
    template::render(NETWORKD, &data)
}

/// A netplan file (`network:` at the top).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Netplan {
    pub network: NetplanNetwork,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetplanNetwork {
    pub version: u8,
    /// Always `networkd`: the server/Pi images have no NetworkManager.
    pub renderer: String,
    pub ethernets: BTreeMap<String, Ethernet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ethernet {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<EthernetMatch>,
    #[serde(rename = "set-name", default, skip_serializing_if = "Option::is_none")]
    pub set_name: Option<String>,
    pub dhcp4: bool,
    /// networkd keeps the static address when it restarts (netplan's
    /// `critical`, networkd's `KeepConfiguration=static` as the Debian
    /// renderer writes it): a node never loses its address, and the API
    /// its endpoint, under a running kubelet.
    #[serde(default)]
    pub critical: bool,
    pub addresses: Vec<String>,
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Nameservers>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EthernetMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macaddress: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub to: String,
    pub via: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nameservers {
    pub addresses: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

/// The typed netplan document for this node.
pub(crate) fn netplan_doc(cfg: &NodeConfig) -> Netplan {
    let n = &cfg.node;
    // The id is the interface name when matching by name (netplan's simplest
    // form); a MAC match renames the NIC to a name known in advance.
    let (id, match_, set_name) = match (&n.mac, &n.interface) {
        (Some(mac), _) => (
            MAC_MATCHED_NAME.to_string(),
            Some(EthernetMatch {
                name: None,
                macaddress: Some(mac.clone()),
            }),
            Some(MAC_MATCHED_NAME.to_string()),
        ),
        (None, Some(name)) => (name.clone(), None, None),
        (None, None) => (
            GLOB_MATCH_ID.to_string(),
            Some(EthernetMatch {
                name: Some(DEFAULT_NETPLAN_NAME_MATCH.to_string()),
                macaddress: None,
            }),
            None,
        ),
    };
    let nameservers = (!n.dns.is_empty() || n.domain.is_some()).then(|| Nameservers {
        addresses: n.dns.clone(),
        search: n.domain.iter().cloned().collect(),
    });
    let ethernet = Ethernet {
        match_,
        set_name,
        dhcp4: false,
        critical: true,
        addresses: vec![n.address.to_string()],
        routes: vec![Route {
            to: "default".to_string(),
            via: n.gateway,
        }],
        nameservers,
    };
    Netplan {
        network: NetplanNetwork {
            version: 2,
            renderer: "networkd".to_string(),
            ethernets: BTreeMap::from([(id, ethernet)]),
        },
    }
}

/// `/etc/netplan/10-piha.yaml`.
pub(crate) fn netplan(cfg: &NodeConfig) -> Result<String, RenderError> {
    check_fields(cfg)?;
    let body = yaml_serde::to_string(&netplan_doc(cfg)).map_err(|error| RenderError::Yaml {
        what: "the netplan file",
        error,
    })?;
    Ok(format!("{}{body}", header("#", cfg)))
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use crate::node::NetworkRenderer;
    use crate::render::testing::node;
    use crate::render::{NETPLAN_FILE, NETWORKD_FILE};

    use super::{MAC_MATCHED_NAME, Netplan, files, netplan, netplan_doc, networkd};

    #[test]
    fn networkd_matches_name_mac_or_default() {
        let by_name = networkd(&node("lb1", NetworkRenderer::Networkd)).expect("renders");
        assert!(by_name.contains("[Match]\nName=ens3\n"), "{by_name}");
        let by_mac = networkd(&node("w1", NetworkRenderer::Networkd)).expect("renders");
        assert!(by_mac.contains("[Match]\nMACAddress=dc:a6:32:00:00:21\n"), "{by_mac}");
        let default = networkd(&node("cp1", NetworkRenderer::Networkd)).expect("renders");
        assert!(default.contains("[Match]\nName=en* eth*\n"), "{default}");
        assert!(
            default.contains("Address=10.1.0.11/24\nGateway=10.1.0.1\nDNS=10.1.0.1\nDNS=1.1.1.1\nDomains=lab.example\n"),
            "{default}"
        );
    }

    #[test]
    fn renderer_picks_the_file() {
        let f = files(&node("cp1", NetworkRenderer::Networkd)).expect("renders");
        assert_eq!((f[0].path.as_str(), f[0].mode), (NETWORKD_FILE, 0o644));
        let f = files(&node("cp1", NetworkRenderer::Netplan)).expect("renders");
        assert_eq!((f[0].path.as_str(), f[0].mode), (NETPLAN_FILE, 0o600));
    }

    #[test]
    fn netplan_renames_only_a_mac_matched_nic() {
        let w1 = netplan_doc(&node("w1", NetworkRenderer::Netplan));
        let eth = &w1.network.ethernets[MAC_MATCHED_NAME];
        assert_eq!(eth.set_name.as_deref(), Some(MAC_MATCHED_NAME));
        let lb1 = netplan_doc(&node("lb1", NetworkRenderer::Netplan));
        assert!(lb1.network.ethernets["ens3"].set_name.is_none());
        assert!(lb1.network.ethernets["ens3"].match_.is_none());
    }

    #[test]
    fn netplan_round_trips() {
        let cfg = node("w1", NetworkRenderer::Netplan);
        let text = netplan(&cfg).expect("renders");
        let back: Netplan = yaml_serde::from_str(&text).expect("parses back");
        assert_eq!(back, netplan_doc(&cfg));
        assert!(text.contains("- to: default\n"), "{text}");
    }

    #[test]
    fn an_interface_with_a_space_is_refused() {
        let mut cfg = node("cp1", NetworkRenderer::Networkd);
        cfg.node.interface = Some("eth0\nAddress=1.2.3.4/8".to_string());
        let err = files(&cfg).expect_err("refused").to_string();
        assert!(err.contains("node.interface"), "{err}");
    }
}
