//! identity (every boot): hostname, /etc/hosts, the static network, the admin
//! user's SSH keys. Re-applied on every boot, so a card re-stamped with
//! another node's identity turns this board into that node — as long as it
//! has not yet joined the cluster as someone else.
//!
//! A node that has joined (ran kubeadm, or became a director) keeps its
//! identity: its name and address are baked into certificates, etcd
//! membership and the directors' real-server lists, so silently renaming it
//! would leave a broken member behind and a confusing duplicate. Instead the
//! step fails, changes nothing, and says how to really re-purpose the board.

use anyhow::Context;
use piha_config::node::NodeConfig;
use piha_config::render::{self, NETPLAN_FILE, NETWORKD_FILE};
use piha_runner::Cmd;

use super::{Env, Step, kubeadm};
use crate::agent::Refused;
use crate::files;
use crate::retry::retry;
use crate::state::{NodeIdentity, Store};

pub fn run(env: &Env, cfg: &NodeConfig, store: &mut Store) -> anyhow::Result<()> {
    let wanted = NodeIdentity::of(cfg);
    if let Some(joined) = &store.state.joined {
        if !same_member(joined, &wanted) {
            // Refused: this board will never use the other node's secrets,
            // so they leave the card now (`agent::refuse`).
            return Err(Refused(format!(
                "this board already joined as {} but the card now says {}: a node cannot silently change its cluster identity \
                 (fix: put the card stamped for {} back, or to re-purpose this board run `kubeadm reset -f` (directors: \
                 `systemctl disable --now keepalived`), then `piha-agent reset`, re-stamp the card and reboot; or flash the image afresh).",
                joined.describe(),
                wanted.describe(),
                joined.name
            ))
            .into());
        }
    }
    if let Some(previous) = store.state.identity.clone() {
        if previous != wanted {
            // Not joined yet: the board simply becomes the new node. What was
            // set up for the old one is redone for the new one.
            log::warn!("the card was re-stamped: {} becomes {}", previous.describe(), wanted.describe());
            let kubeadm_ran = Step::AFTER_IDENTITY
                .iter()
                .any(|s| store.has_mark(s.name(), kubeadm::STARTED) || store.has_mark(s.name(), kubeadm::DONE));
            for step in Step::AFTER_IDENTITY {
                store.state.forget(step.name());
            }
            if kubeadm_ran {
                // What kubeadm did for the old identity must be reset before
                // the new one's init or join (see `kubeadm::reset_if_needed`).
                if let Some(role) = Step::plan(cfg).into_iter().find(|s| s.is_role()) {
                    store.state.add_mark(role.name(), kubeadm::STARTED);
                }
            }
            store.save()?;
        }
    }

    let rendered = render::identity_files(cfg).context("rendering the identity files")?;
    let changed = files::apply(env.paths, &rendered)?;

    // The kernel's hostname, every boot: /etc/hostname is only read at boot,
    // and something (DHCP) may have set another name before the agent ran.
    env.runner
        .run(&Cmd::new("hostname").arg(&cfg.node.name))
        .context("setting the hostname")?;

    // Reload the network only when its file changed: a reload re-applies
    // addresses, which would needlessly flap the link on every boot.
    if changed.iter().any(|p| p == NETWORKD_FILE) {
        system_call(env, Cmd::new("networkctl").arg("reload")).context("reloading systemd-networkd")?;
    }
    if changed.iter().any(|p| p == NETPLAN_FILE) {
        system_call(env, Cmd::new("netplan").arg("apply")).context("applying the netplan configuration")?;
    }

    store.state.identity = Some(wanted);
    store.save()
}

/// Whether two identities are the same cluster member. The `init` flag only
/// mattered for the first run of the role step, so it does not count.
fn same_member(a: &NodeIdentity, b: &NodeIdentity) -> bool {
    (&a.cluster, &a.name, a.address, a.role) == (&b.cluster, &b.name, b.address, b.role)
}

/// A call to a system service, retried per `timings.system_call`: a D-Bus
/// timeout on a loaded first boot is not a reason to fail the step.
fn system_call(env: &Env, cmd: Cmd) -> Result<(), piha_runner::RunError> {
    retry(&cmd.display(), &env.timings.system_call, env.sleeper, || {
        env.runner.run(&cmd).map(drop)
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use piha_config::node::NetworkRenderer;
    use piha_config::render::{AUTHORIZED_KEYS, HOSTNAME, HOSTS, NETWORKD_FILE};
    use piha_config::status::Phase;

    use crate::agent::Ending;
    use crate::testing::{Scratch, node, stamp};
    use piha_atomic::running_as_root;

    #[test]
    fn writes_identity_files_with_modes_and_reloads_the_network() {
        let s = Scratch::new("cp2");
        assert_eq!(s.run(), Ending::Done);
        assert_eq!(s.read(HOSTNAME), "cp2\n");
        assert!(
            s.read(HOSTS).lines().any(|l| l.starts_with("10.0.2.13") && l.contains("cp3")),
            "{}",
            s.read(HOSTS)
        );
        assert!(s.read(NETWORKD_FILE).contains("10.0.2.12/24"));
        assert_eq!(
            (s.mode(HOSTNAME), s.mode(HOSTS), s.mode(NETWORKD_FILE), s.mode(AUTHORIZED_KEYS)),
            (0o644, 0o644, 0o644, 0o600)
        );
        assert!(s.read(AUTHORIZED_KEYS).contains("tester@piha"));
        if running_as_root() {
            let meta = std::fs::metadata(s.paths.host(AUTHORIZED_KEYS)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
        }
        let commands = s.commands();
        assert!(commands.contains(&"hostname cp2".to_string()));
        assert!(commands.contains(&"networkctl reload".to_string()));
    }

    #[test]
    fn a_network_reload_that_times_out_is_tried_again() {
        let s = Scratch::new("cp2");
        s.runner
            .rec
            .respond("networkctl", Err("Failed to reload network settings: Connection timed out".into()));
        assert_eq!(s.run(), Ending::Done);
        let reloads = s.commands().iter().filter(|c| *c == "networkctl reload").count();
        assert_eq!(reloads, 2);
    }

    #[test]
    fn identity_is_reapplied_every_boot_but_the_network_reloaded_only_on_change() {
        let s = Scratch::new("w1");
        assert_eq!(s.run(), Ending::Done);
        // Someone edited /etc/hostname by hand: the next boot puts it back.
        std::fs::write(s.paths.host(HOSTNAME), "oops\n").unwrap();
        s.clear_commands();
        assert_eq!(s.run(), Ending::Done);
        assert_eq!(s.read(HOSTNAME), "w1\n");
        let commands = s.commands();
        assert!(commands.contains(&"hostname w1".to_string()), "{commands:#?}");
        assert!(
            !commands.iter().any(|c| c.starts_with("networkctl")),
            "unchanged network must not be reloaded: {commands:#?}"
        );
    }

    #[test]
    fn a_card_restamped_before_joining_becomes_the_new_node() {
        let s = Scratch::new("w1");
        s.runner.fail_once("kubeadm join", "could not reach the API");
        s.runner.fail_once("kubeadm join", "could not reach the API");
        assert_eq!(s.run(), Ending::Failed);
        assert!(s.state().is_done("host-prep"));
        // The same board gets the card of cp3.
        std::fs::remove_dir_all(s.card.path().join("secrets")).unwrap();
        stamp(s.card.path(), &node("cp3", NetworkRenderer::Networkd));
        s.clear_commands();
        assert_eq!(s.run(), Ending::Done);
        assert_eq!(s.read(HOSTNAME), "cp3\n");
        let commands = s.commands();
        assert!(
            commands.iter().any(|c| c.starts_with("modprobe")),
            "host-prep runs again for the new identity: {commands:#?}"
        );
        assert!(
            commands.contains(&"kubeadm reset -f".to_string()),
            "the worker's half-done join is cleaned up: {commands:#?}"
        );
        assert_eq!(s.state().joined.map(|j| j.name), Some("cp3".to_string()));
    }

    #[test]
    fn a_joined_node_refuses_another_identity_and_changes_nothing() {
        let s = Scratch::new("w1");
        assert_eq!(s.run(), Ending::Done);
        stamp(s.card.path(), &node("cp3", NetworkRenderer::Networkd));
        s.clear_commands();
        assert_eq!(s.run(), Ending::Failed);
        let status = s.status();
        assert_eq!(status.phase, Phase::Failed);
        let error = status.error.unwrap();
        assert!(
            error.contains("already joined as w1") && error.contains("cp3") && error.contains("piha-agent reset"),
            "{error}"
        );
        assert_eq!(s.read(HOSTNAME), "w1\n");
        assert!(!s.read(NETWORKD_FILE).contains("10.0.2.13"));
        assert!(!s.card.path().join("secrets").exists(), "the refused card keeps no secrets");
        assert!(error.contains("secrets were overwritten and removed"), "{error}");
        let commands = s.commands();
        assert!(
            !commands.iter().any(|c| c.starts_with("hostname") || c.starts_with("networkctl")),
            "{commands:#?}"
        );
    }
}
