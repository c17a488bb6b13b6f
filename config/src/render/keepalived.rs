//! keepalived.conf for directors: an LVS-DR `virtual_server VIP:port` over
//! every control plane, each checked with an HTTP GET on its health endpoint
//! ([`APICHECK_PORT`]: 200 only while its API server is ready and it holds the
//! VIP on `lo`), and a VRRP instance that puts the VIP on the director's NIC
//! (MASTER/BACKUP when there are two, with IPVS connection sync between them).
//!
//! Keywords are keepalived 2.2's (`lvs_sched`/`lvs_method`; the older
//! `lb_algo`/`lb_kind` are only aliases). Every rendered file is checked with
//! the real `keepalived -t` in the tests.

use serde::Serialize;

use crate::cluster::Role;
use crate::node::{NetworkRenderer, NodeConfig};

use super::network::MAC_MATCHED_NAME;
use super::realserver::APICHECK_PORT;
use super::template::{self, KEEPALIVED};
use super::{RenderError, check_word, header};

/// VRRP interface when the cluster file names none. keepalived needs a real
/// interface name and cannot find "the NIC holding this address" itself; eth0
/// is keepalived's own default and the name on Raspberry Pi OS/Ubuntu. Set
/// `interface:` on director nodes whose NIC is named otherwise, or let the
/// agent pass the NIC it found to [`config_on`].
pub(crate) const DEFAULT_INTERFACE: &str = "eth0";

/// The interface keepalived's VRRP instance and the VIP use: the node's
/// `interface`, else the name netplan gives a MAC-matched NIC, else
/// [`DEFAULT_INTERFACE`].
pub fn vrrp_interface(cfg: &NodeConfig) -> String {
    match (&cfg.node.interface, &cfg.node.mac, cfg.cluster.network_renderer) {
        (Some(name), _, _) => name.clone(),
        (None, Some(_), NetworkRenderer::Netplan) => MAC_MATCHED_NAME.to_string(),
        _ => DEFAULT_INTERFACE.to_string(),
    }
}

/// VRRP priority of the MASTER (the first director in cluster-file order).
pub(crate) const MASTER_PRIORITY: u8 = 150;
/// VRRP priority of the BACKUP.
pub(crate) const BACKUP_PRIORITY: u8 = 100;

/// Seconds between two health checks of a control plane (keepalived's
/// `delay_loop`, counted from the end of one check to the start of the next).
pub const CHECK_INTERVAL_SECS: u32 = 2;
/// How long one check may take to connect, and then to get its answer
/// (`connect_timeout`). The health endpoint answers within 2 s, and a
/// TLS handshake on a busy node can take a second of that.
pub const CHECK_TIMEOUT_SECS: u32 = 3;
/// Checks repeated after a failed one before the control plane leaves the
/// pool (`retry`): one failure alone (a dropped packet) does not remove it.
pub const CHECK_RETRIES: u32 = 1;
/// Pause before such a repeated check (`delay_before_retry`).
pub const CHECK_RETRY_DELAY_SECS: u32 = 1;

/// The longest time from a control plane failing (API not ready, VIP gone
/// from `lo`, node dead) to the director removing it from the IPVS table:
/// the last good check has just ended, so the next starts after
/// [`CHECK_INTERVAL_SECS`]; it and each of the [`CHECK_RETRIES`] repeats
/// (each after [`CHECK_RETRY_DELAY_SECS`]) fail within [`CHECK_TIMEOUT_SECS`]
/// (a dead node: the connect times out; a live one answers 503 at once).
/// 2 + 3 + 1 + 3 = 9 s. A control plane that answers 503 leaves in about
/// [`CHECK_INTERVAL_SECS`] + [`CHECK_RETRY_DELAY_SECS`] = 3 s. One that
/// recovers is back after its next good check, within
/// [`CHECK_INTERVAL_SECS`] + [`CHECK_TIMEOUT_SECS`].
pub const WORST_CASE_REMOVAL_SECS: u32 =
    CHECK_INTERVAL_SECS + (CHECK_RETRIES + 1) * CHECK_TIMEOUT_SECS + CHECK_RETRIES * CHECK_RETRY_DELAY_SECS;

/// The VRRP instance; the sync daemon follows its MASTER/BACKUP state by this
/// name (`keepalived -t` accepts a name that matches no instance).
const INSTANCE: &str = "piha_api";

/// The path keepalived asks the health endpoint for. The endpoint answers
/// every path alike; the name says what it reports.
pub const CHECK_PATH: &str = "/ready";

/// Whether two directors run IPVS connection sync by default: the MASTER
/// sends its connection table to the BACKUP, so after a failover the new
/// MASTER sends established API connections (watches, `kubectl exec`) to the
/// same control plane instead of resetting them: IPVS schedules only SYNs, so
/// a mid-stream packet it has no entry for goes to the director's own TCP
/// stack, which answers with a reset. One director has nobody to sync with.
/// Whether this matters enough is for the lab to measure; [`Choices`] turns it off.
pub fn sync_daemon_default(cfg: &NodeConfig) -> bool {
    cfg.directors().count() == 2
}

/// What a caller may choose about a director's keepalived.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choices {
    /// The NIC for VRRP, the VIP and the sync daemon.
    pub interface: String,
    /// Run IPVS connection sync with the other director (`lvs_sync_daemon`).
    pub sync_daemon: bool,
}

impl Choices {
    /// piha's defaults: [`vrrp_interface`] and [`sync_daemon_default`].
    pub fn defaults(cfg: &NodeConfig) -> Choices {
        Choices {
            interface: vrrp_interface(cfg),
            sync_daemon: sync_daemon_default(cfg),
        }
    }
}

#[derive(Serialize)]
struct Data {
    header: String,
    router_id: String,
    sync_daemon: bool,
    instance: &'static str,
    single: bool,
    director_count: usize,
    state: &'static str,
    interface: String,
    router_vrid: u8,
    priority: u8,
    node_ip: String,
    peers: Vec<String>,
    vip: String,
    prefix: u8,
    port: u16,
    check: Check,
    real_servers: Vec<RealServer>,
}

/// The health check's numbers, for the template.
#[derive(Serialize)]
struct Check {
    port: u16,
    path: &'static str,
    interval: u32,
    timeout: u32,
    retries: u32,
    retry_delay: u32,
    worst_case_removal: u32,
}

#[derive(Serialize)]
struct RealServer {
    name: String,
    ip: String,
}

/// `/etc/keepalived/keepalived.conf` on a director (VRRP on
/// [`vrrp_interface`]); `None` on every other role.
pub fn config(cfg: &NodeConfig) -> Result<Option<String>, RenderError> {
    config_on(cfg, &vrrp_interface(cfg))
}

/// As [`config`], with VRRP and the VIP on `interface` (e.g. the NIC the agent
/// found holding the node's address).
pub fn config_on(cfg: &NodeConfig, interface: &str) -> Result<Option<String>, RenderError> {
    let choices = Choices {
        interface: interface.to_string(),
        ..Choices::defaults(cfg)
    };
    config_with(cfg, &choices)
}

/// As [`config`], with every choice made by the caller (e.g. the lab turning
/// the sync daemon off to measure what it is worth).
pub fn config_with(cfg: &NodeConfig, choices: &Choices) -> Result<Option<String>, RenderError> {
    if cfg.node.role != Role::Director {
        return Ok(None);
    }
    let interface = choices.interface.as_str();
    check_word("node.interface", interface, "a network interface name")?;
    let directors: Vec<_> = cfg.directors().collect();
    let index = directors.iter().position(|d| d.name == cfg.node.name).unwrap_or(0);
    let (state, priority) = if index == 0 {
        ("MASTER", MASTER_PRIORITY)
    } else {
        // A third director is refused by validation; should one appear, it
        // ranks below the second rather than fighting for MASTER.
        let rank = index.saturating_sub(1).min(9) as u8;
        ("BACKUP", BACKUP_PRIORITY - 10 * rank)
    };
    let data = Data {
        header: header("#", cfg),
        router_id: cfg.node.name.clone(),
        sync_daemon: choices.sync_daemon,
        instance: INSTANCE,
        single: directors.len() <= 1,
        director_count: directors.len(),
        state,
        interface: interface.to_string(),
        router_vrid: cfg.cluster.vrrp_router_id,
        priority,
        node_ip: cfg.node.address.addr().to_string(),
        peers: directors
            .iter()
            .filter(|d| d.name != cfg.node.name)
            .map(|d| d.ip.to_string())
            .collect(),
        vip: cfg.cluster.vip.to_string(),
        prefix: cfg.node.address.prefix_len(),
        port: cfg.cluster.api_port,
        check: Check {
            port: APICHECK_PORT,
            path: CHECK_PATH,
            interval: CHECK_INTERVAL_SECS,
            timeout: CHECK_TIMEOUT_SECS,
            retries: CHECK_RETRIES,
            retry_delay: CHECK_RETRY_DELAY_SECS,
            worst_case_removal: WORST_CASE_REMOVAL_SECS,
        },
        real_servers: cfg
            .control_planes()
            .map(|p| RealServer {
                name: p.name.clone(),
                ip: p.ip.to_string(),
            })
            .collect(),
    };
    template::render(KEEPALIVED, &data).map(Some)
}

#[cfg(test)]
mod tests {
    use crate::node::NetworkRenderer;
    use crate::render::testing::node;

    use super::{
        CHECK_INTERVAL_SECS, CHECK_RETRIES, CHECK_RETRY_DELAY_SECS, CHECK_TIMEOUT_SECS, Choices, WORST_CASE_REMOVAL_SECS, config,
        config_on, config_with, sync_daemon_default, vrrp_interface,
    };

    #[test]
    fn only_directors_get_keepalived() {
        assert_eq!(config(&node("cp1", NetworkRenderer::Networkd)).expect("renders"), None);
        assert_eq!(config(&node("w1", NetworkRenderer::Networkd)).expect("renders"), None);
    }

    #[test]
    fn two_directors_are_master_and_backup_with_unicast_peers() {
        let lb1 = config(&node("lb1", NetworkRenderer::Networkd)).expect("renders").expect("director");
        assert!(lb1.contains("state MASTER\n    interface ens3\n"), "{lb1}");
        assert!(lb1.contains("priority 150\n"));
        assert!(
            lb1.contains("unicast_src_ip 10.1.0.10\n    unicast_peer {\n        10.1.0.9\n    }\n"),
            "{lb1}"
        );
        let lb2 = config(&node("lb2", NetworkRenderer::Networkd)).expect("renders").expect("director");
        assert!(lb2.contains("state BACKUP\n    interface eth0\n"), "{lb2}");
        assert!(lb2.contains("priority 100\n"));
        assert!(lb2.contains("10.1.0.100/24 dev eth0\n"));
    }

    #[test]
    fn every_control_plane_is_a_real_server_checked_on_its_health_endpoint() {
        let lb1 = config(&node("lb1", NetworkRenderer::Networkd)).expect("renders").expect("director");
        assert!(
            lb1.contains("virtual_server 10.1.0.100 6443 {\n    delay_loop 2\n    alpha\n    lvs_sched rr\n    lvs_method DR\n"),
            "{lb1}"
        );
        for ip in ["10.1.0.11", "10.1.0.12"] {
            assert!(lb1.contains(&format!("real_server {ip} 6443 {{\n")), "{ip}:\n{lb1}");
        }
        assert!(!lb1.contains("real_server 10.1.0.21"), "workers are not real servers");
        let check = "        HTTP_GET {\n            url {\n                path /ready\n                status_code 200\n            }\n            \
                     connect_port 6444\n            connect_timeout 3\n            retry 1\n            delay_before_retry 1\n        }\n";
        assert_eq!(lb1.matches(check).count(), 2, "{lb1}");
        assert!(!lb1.contains("TCP_CHECK"), "{lb1}");
        assert!(lb1.contains("Worst case from failure to removal: 9 s"), "{lb1}");
    }

    #[test]
    fn worst_case_removal_is_interval_plus_two_timeouts_plus_a_retry_delay() {
        assert_eq!(
            (CHECK_INTERVAL_SECS, CHECK_TIMEOUT_SECS, CHECK_RETRIES, CHECK_RETRY_DELAY_SECS),
            (2, 3, 1, 1)
        );
        assert_eq!(WORST_CASE_REMOVAL_SECS, 9);
    }

    #[test]
    fn two_directors_sync_connections_unless_told_not_to() {
        let cfg = node("lb2", NetworkRenderer::Networkd);
        assert!(sync_daemon_default(&cfg));
        let on = config(&cfg).expect("renders").expect("director");
        assert!(
            on.contains("global_defs {\n    router_id lb2\n") && on.contains("    lvs_sync_daemon eth0 piha_api\n}\n"),
            "{on}"
        );
        let choices = Choices {
            sync_daemon: false,
            ..Choices::defaults(&cfg)
        };
        let off = config_with(&cfg, &choices).expect("renders").expect("director");
        assert!(!off.contains("lvs_sync_daemon"), "{off}");
        assert!(off.contains("global_defs {\n    router_id lb2\n}\n"), "{off}");
    }

    #[test]
    fn interface_follows_the_cluster_file_or_the_caller() {
        let mut cfg = node("lb2", NetworkRenderer::Netplan);
        assert_eq!(vrrp_interface(&cfg), "eth0");
        cfg.node.mac = Some("52:54:00:00:00:09".to_string());
        assert_eq!(vrrp_interface(&cfg), "piha0");
        let text = config_on(&cfg, "enp1s0").expect("renders").expect("director");
        assert!(text.contains("interface enp1s0\n"));
        assert!(config_on(&cfg, "bad name").is_err());
    }
}
