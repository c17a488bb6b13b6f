//! Parsing `ipvsadm -Ln` (the IPVS table keepalived programs on a director)
//! and `ip -j -4 addr show` (which NIC holds the director's address).

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Deserialize;

/// One virtual service: `TCP  10.0.2.100:6443 wrr` and its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    pub protocol: String,
    pub address: String,
    pub scheduler: String,
    pub real_servers: Vec<RealServer>,
}

/// `  -> 10.0.2.11:6443  Route  10  0  0`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServer {
    pub address: String,
    pub forward: String,
    pub weight: u32,
}

/// Parses the numeric listing (`-n`). Header lines are skipped.
pub fn parse(text: &str) -> Vec<VirtualService> {
    let mut services: Vec<VirtualService> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["->", "RemoteAddress:Port", ..] => {}
            ["->", address, forward, weight, ..] => {
                if let Some(vs) = services.last_mut() {
                    vs.real_servers.push(RealServer {
                        address: address.to_string(),
                        forward: forward.to_string(),
                        weight: weight.parse().unwrap_or(0),
                    });
                }
            }
            [protocol, address, scheduler, ..] if matches!(*protocol, "TCP" | "UDP" | "SCTP" | "FWM") => services.push(VirtualService {
                protocol: protocol.to_string(),
                address: address.to_string(),
                scheduler: scheduler.to_string(),
                real_servers: Vec::new(),
            }),
            _ => {}
        }
    }
    services
}

/// The TCP virtual service at `vip`, if keepalived has programmed it.
pub fn find(services: &[VirtualService], vip: SocketAddrV4) -> Option<&VirtualService> {
    let want = vip.to_string();
    services.iter().find(|s| s.protocol == "TCP" && s.address == want)
}

#[derive(Debug, Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    #[serde(default)]
    local: Option<Ipv4Addr>,
}

/// The interface holding `address`, from `ip -j -4 addr show`.
pub fn nic_holding(ip_json: &[u8], address: Ipv4Addr) -> Result<Option<String>, serde_json::Error> {
    let links: Vec<Link> = serde_json::from_slice(ip_json)?;
    Ok(links
        .into_iter()
        .find(|l| l.addr_info.iter().any(|a| a.local == Some(address)))
        .map(|l| l.ifname))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::path::PathBuf;

    use super::{find, nic_holding, parse};

    fn fixture(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/agent").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn parses_a_director_table() {
        let text = String::from_utf8(fixture("ipvsadm-Ln.txt")).unwrap();
        let services = parse(&text);
        assert_eq!(services.len(), 1);
        let vs = find(&services, SocketAddrV4::new(Ipv4Addr::new(10, 10, 197, 101), 6443)).expect("the VIP is listed");
        assert_eq!(vs.scheduler, "wrr");
        let reals: Vec<&str> = vs.real_servers.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(reals, vec!["10.10.197.97:6443", "10.10.197.98:6443", "10.10.197.99:6443"]);
        assert!(vs.real_servers.iter().all(|r| r.forward == "Route" && r.weight == 10));
        assert!(find(&services, SocketAddrV4::new(Ipv4Addr::new(10, 10, 197, 101), 443)).is_none());
    }

    #[test]
    fn empty_table_has_no_services() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n";
        assert!(parse(text).is_empty());
    }

    #[test]
    fn finds_the_nic_holding_an_address() {
        let json = fixture("ip-addr.json");
        assert_eq!(nic_holding(&json, Ipv4Addr::new(10, 0, 2, 10)).unwrap().as_deref(), Some("ens3"));
        assert_eq!(nic_holding(&json, Ipv4Addr::new(10, 0, 2, 99)).unwrap(), None);
        assert!(nic_holding(b"", Ipv4Addr::LOCALHOST).is_err());
    }
}
