//! director: write keepalived.conf, enable and start keepalived, and check
//! that the IPVS table shows the virtual server VIP:port.
//!
//! It runs on every boot: a director's card re-stamped from a cluster file
//! that gained (or lost) a control plane rewrites keepalived.conf, and a
//! changed file is reloaded (`reload-or-restart`: keepalived re-reads it on
//! SIGHUP and keeps its VRRP state), so the new control plane enters the
//! pool with no reset and without the VIP moving.
//!
//! The real servers are not required to be in the table yet: keepalived adds
//! a control plane only once its health endpoint (piha-apicheck on
//! `APICHECK_PORT`) says its API server is ready and it holds the VIP on lo,
//! and a director usually boots before them. They are logged for diagnosis.

use std::net::SocketAddrV4;

use anyhow::Context;
use piha_config::node::NodeConfig;
use piha_config::render::{self, KEEPALIVED_CONF, keepalived};
use piha_runner::Cmd;

use super::Env;
use crate::files;
use crate::retry::retry;
use crate::units;
use piha_config::ipvs;

const SERVICE: &str = "keepalived.service";

pub fn run(env: &Env, cfg: &NodeConfig) -> anyhow::Result<()> {
    let mut rendered = render::role_files(cfg, None).context("rendering keepalived.conf")?;
    if cfg.node.interface.is_none() {
        // The renderer's default VRRP interface is a guess (eth0); the NIC that
        // holds this node's address once identity applied the network is a fact.
        // On a later boot the address may not be up yet when the agent runs:
        // then the interface the file already names stays, rather than the
        // guess (a reload with VRRP on the wrong NIC would drop the VIP).
        if let Some(nic) = nic_holding_address(env, cfg).or_else(|| interface_in_use(env)) {
            if let Some(conf) = keepalived::config_on(cfg, &nic).context("rendering keepalived.conf")? {
                for f in rendered.iter_mut().filter(|f| f.path == KEEPALIVED_CONF) {
                    f.contents = conf.clone();
                }
            }
        }
    }
    let changed = files::apply(env.paths, &rendered)?;

    env.runner
        .run(&Cmd::new("keepalived").args(["--config-test", "-f", KEEPALIVED_CONF]))
        .with_context(|| format!("keepalived rejects {KEEPALIVED_CONF}"))?;
    env.runner.run(&units::enable_now(SERVICE)).context("starting keepalived")?;
    if !changed.is_empty() {
        env.runner
            .run(&units::reload_or_restart(SERVICE))
            .context("reloading keepalived with the new configuration")?;
    }

    let vip = SocketAddrV4::new(cfg.cluster.vip, cfg.cluster.api_port);
    let listing = Cmd::new("ipvsadm").arg("-Ln");
    let service = retry(
        &format!("waiting for the IPVS virtual server {vip}"),
        &env.timings.ipvs,
        env.sleeper,
        || {
            let out = env.runner.run(&listing).map_err(|e| e.to_string())?;
            let services = ipvs::parse(&out.stdout_str());
            ipvs::find(&services, vip)
                .cloned()
                .ok_or_else(|| format!("`ipvsadm -Ln` does not list TCP {vip} yet"))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e} (fix: `journalctl -u keepalived` on this node says why keepalived did not program it)"))?;
    let reals: Vec<&str> = service.real_servers.iter().map(|r| r.address.as_str()).collect();
    log::info!("IPVS: TCP {vip} {} -> [{}]", service.scheduler, reals.join(", "));
    Ok(())
}

/// The VRRP interface the current keepalived.conf names, if there is one.
fn interface_in_use(env: &Env) -> Option<String> {
    let text = std::fs::read_to_string(env.paths.host(KEEPALIVED_CONF)).ok()?;
    let nic = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("interface "))
        .map(|n| n.trim().to_string())?;
    log::info!("keeping VRRP on {nic}, the interface keepalived.conf already names");
    Some(nic)
}

/// The NIC holding the node's address, or `None` (logged) if it cannot be told.
fn nic_holding_address(env: &Env, cfg: &NodeConfig) -> Option<String> {
    let address = cfg.node.address.addr();
    let out = match env.runner.run(&Cmd::new("ip").args(["-j", "-4", "addr", "show"])) {
        Ok(out) => out,
        Err(e) => {
            log::warn!("cannot list addresses ({e}); keepalived uses the default interface");
            return None;
        }
    };
    match ipvs::nic_holding(&out.stdout, address) {
        Ok(Some(nic)) => Some(nic),
        Ok(None) => {
            log::warn!("no interface holds {address} yet; keepalived uses the default interface");
            None
        }
        Err(e) => {
            log::warn!("cannot parse `ip -j -4 addr show` ({e}); keepalived uses the default interface");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use piha_config::render::KEEPALIVED_CONF;
    use piha_runner::Output;

    use crate::agent::Ending;
    use crate::testing::Scratch;

    fn stdout(text: &str) -> Result<Output, String> {
        Ok(Output {
            stdout: text.as_bytes().to_vec(),
            stderr: Vec::new(),
        })
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/agent").join(name)).unwrap()
    }

    #[test]
    fn keepalived_on_the_nic_holding_the_address_and_the_vip_in_ipvs() {
        let s = Scratch::new("lb1");
        s.runner.rec.respond("ip", stdout(&fixture("ip-addr.json")));
        s.runner.rec.respond("ipvsadm", stdout("Prot LocalAddress:Port Scheduler Flags\n"));
        s.runner
            .rec
            .respond("ipvsadm", stdout(&fixture("ipvsadm-Ln.txt").replace("10.10.197.101", "10.0.2.100")));
        assert_eq!(s.run(), Ending::Done);
        let conf = s.read(KEEPALIVED_CONF);
        assert!(conf.contains("interface ens3"), "{conf}");
        assert!(conf.contains("10.0.2.100"), "{conf}");
        assert_eq!(s.mode(KEEPALIVED_CONF), 0o644);
        let commands = s.commands();
        let test = s
            .position("keepalived --config-test -f /etc/keepalived/keepalived.conf")
            .expect("config checked");
        let start = s.position("systemctl enable --now keepalived.service").unwrap();
        assert!(test < start);
        assert_eq!(
            commands.iter().filter(|c| *c == "ipvsadm -Ln").count(),
            2,
            "retried until the VIP shows: {commands:#?}"
        );
        assert!(
            !commands
                .iter()
                .any(|c| c.starts_with("kubeadm") && !c.starts_with("kubeadm version")),
            "{commands:#?}"
        );
        assert!(!s.card.path().join("secrets").exists());
    }

    #[test]
    fn a_missing_virtual_server_fails_the_step() {
        let s = Scratch::new("lb1");
        assert_eq!(s.run(), Ending::Failed);
        let error = s.status().error.unwrap();
        assert!(
            error.contains("does not list TCP 10.0.2.100:6443") && error.contains("journalctl -u keepalived"),
            "{error}"
        );
    }

    /// A later boot that runs before the address is up keeps the interface
    /// keepalived.conf already names, and reloads nothing.
    #[test]
    fn a_boot_before_the_address_is_up_keeps_the_interface() {
        let s = Scratch::new("lb1");
        let listed = fixture("ipvsadm-Ln.txt").replace("10.10.197.101", "10.0.2.100");
        s.runner.rec.respond("ip", stdout(&fixture("ip-addr.json")));
        s.runner.rec.respond("ipvsadm", stdout(&listed));
        assert_eq!(s.run(), Ending::Done);
        assert!(s.read(KEEPALIVED_CONF).contains("interface ens3"));
        s.clear_commands();
        s.runner.rec.respond("ip", stdout("[]"));
        s.runner.rec.respond("ipvsadm", stdout(&listed));
        assert_eq!(s.run(), Ending::Done);
        assert!(s.read(KEEPALIVED_CONF).contains("interface ens3"), "{}", s.read(KEEPALIVED_CONF));
        assert!(!s.commands().iter().any(|c| c.contains("reload-or-restart")), "{:#?}", s.commands());
    }

    /// A control plane added to the cluster file: the director's card
    /// re-stamped from it, its next boot rewrites keepalived.conf and
    /// reloads keepalived (no reset, no restart); an unchanged boot touches nothing.
    #[test]
    fn a_restamped_director_reloads_keepalived_with_the_new_control_plane() {
        let s = Scratch::new("lb1");
        let listed = fixture("ipvsadm-Ln.txt").replace("10.10.197.101", "10.0.2.100");
        s.runner.rec.respond("ipvsadm", stdout(&listed));
        assert_eq!(s.run(), Ending::Done);
        assert!(!s.read(KEEPALIVED_CONF).contains("10.0.2.14"));

        // A boot with the same card: keepalived is left alone.
        s.clear_commands();
        s.runner.rec.respond("ipvsadm", stdout(&listed));
        assert_eq!(s.run(), Ending::Done);
        assert!(!s.commands().iter().any(|c| c.contains("reload-or-restart")), "{:#?}", s.commands());

        let grown = crate::testing::QEMU_LAB.replace(
            "  - name: w1\n",
            "  - name: cp4\n    board: amd64\n    role: control-plane\n    ip: 10.0.2.14\n  - name: w1\n",
        );
        let cluster = piha_config::cluster::ClusterFile::parse(std::path::Path::new("cluster.yaml"), &grown).unwrap();
        let cfg = piha_config::node::NodeConfig::for_node(&cluster, "lb1", piha_config::node::NetworkRenderer::Networkd).unwrap();
        crate::testing::stamp(s.card.path(), &cfg);
        s.clear_commands();
        s.runner.rec.respond("ipvsadm", stdout(&listed));
        assert_eq!(s.run(), Ending::Done);
        assert!(
            s.read(KEEPALIVED_CONF).contains("real_server 10.0.2.14 6443"),
            "{}",
            s.read(KEEPALIVED_CONF)
        );
        let commands = s.commands();
        assert!(
            commands.contains(&"systemctl reload-or-restart keepalived.service".to_string()),
            "{commands:#?}"
        );
        assert!(!commands.iter().any(|c| c.starts_with("systemctl restart")), "{commands:#?}");
    }
}
