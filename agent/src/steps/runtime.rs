//! runtime: configure containerd or CRI-O (systemd cgroups, matching the
//! kubelet's `cgroupDriver: systemd`; CRI-O's packaged bridge CNI configs
//! removed, so Flannel's is the pod network), start it, and wait for its socket.
//!
//! Idempotent: the config is rewritten only when it differs, the service is
//! restarted only then, and `enable --now` on a running service does nothing.

use std::os::unix::fs::FileTypeExt;

use anyhow::Context;
use piha_config::cluster::Runtime;
use piha_config::node::NodeConfig;
use piha_config::render::{self, CNI_CONF_DIR, is_packaged_crio_bridge};

use super::Env;
use crate::files;
use crate::retry::retry;
use crate::units;

pub fn run(env: &Env, cfg: &NodeConfig) -> anyhow::Result<()> {
    let runtime = cfg.cluster.runtime;
    let rendered = render::runtime_files(cfg).context("rendering the container runtime's configuration")?;
    let mut changed = files::apply(env.paths, &rendered)?;
    if runtime == Runtime::Crio {
        changed.extend(remove_packaged_bridges(env)?);
    }
    let service = runtime.service();
    env.runner
        .run(&units::enable_now(service))
        .with_context(|| format!("starting {service}"))?;
    if !changed.is_empty() {
        // It may have been running with the packaged defaults since boot.
        env.runner
            .run(&units::restart(service))
            .with_context(|| format!("restarting {service} with the new configuration"))?;
    }
    let socket = env.paths.host(runtime.socket_path());
    retry(
        &format!("waiting for {}", socket.display()),
        &env.timings.runtime_socket,
        env.sleeper,
        || match std::fs::metadata(&socket) {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            Ok(_) => Err("it exists but is not a socket".to_string()),
            Err(e) => Err(e.to_string()),
        },
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{service} did not create its socket {}: {e} (fix: `journalctl -u {service}` on the node says why it did not start)",
            runtime.socket_path()
        )
    })
}

/// Removes the bridge CNI configs a CRI-O package ships: with one of them
/// first in /etc/cni/net.d, pods get 10.85.0.0/16 addresses and Flannel
/// fails with `cni0 already has an IP address`. Returns what it removed.
fn remove_packaged_bridges(env: &Env) -> anyhow::Result<Vec<String>> {
    let dir = env.paths.host(CNI_CONF_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_packaged_crio_bridge(&name) {
            std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            log::info!("removed CRI-O's packaged CNI config {CNI_CONF_DIR}/{name}: Flannel's is the pod network");
            removed.push(format!("{CNI_CONF_DIR}/{name}"));
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use piha_config::cluster::Runtime;
    use piha_config::node::NetworkRenderer;
    use piha_config::render::{CNI_CONF_DIR, CONTAINERD_CONFIG};

    use crate::agent::Ending;
    use crate::testing::{Scratch, node};

    #[test]
    fn configures_starts_and_waits_for_the_socket() {
        let s = Scratch::new("w1");
        assert_eq!(s.run(), Ending::Done);
        assert!(
            s.read(CONTAINERD_CONFIG).contains("SystemdCgroup = true"),
            "{}",
            s.read(CONTAINERD_CONFIG)
        );
        let start = s.position("systemctl enable --now containerd.service").expect("started");
        let restart = s
            .position("systemctl restart containerd.service")
            .expect("restarted for the new config");
        assert!(start < restart);
    }

    /// CRI-O's packaged bridge configs go; Flannel's and anyone else's stay.
    #[test]
    fn crio_loses_its_packaged_bridge_cni_configs() {
        let s = Scratch::new("w1");
        let mut cfg = node("w1", NetworkRenderer::Networkd);
        cfg.cluster.runtime = Runtime::Crio;
        let socket = s.paths.host(Runtime::Crio.socket_path());
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let net_d = s.paths.host(CNI_CONF_DIR);
        std::fs::create_dir_all(&net_d).unwrap();
        let packaged = ["10-crio-bridge.conflist", "100-crio-bridge.conf", "11-crio-ipv4-bridge.conflist"];
        let kept = ["10-flannel.conflist", "200-loopback.conf", "99-crio-bridge.conflist.bak"];
        for f in packaged.iter().chain(&kept) {
            std::fs::write(net_d.join(f), "{}").unwrap();
        }
        super::run(&s.env(), &cfg).expect("the runtime step");
        for f in packaged {
            assert!(!net_d.join(f).exists(), "{f} is still there");
        }
        for f in kept {
            assert!(net_d.join(f).exists(), "{f} was removed");
        }
        assert!(s.position("systemctl restart crio.service").is_some(), "{:?}", s.commands());
    }

    #[test]
    fn a_runtime_without_socket_fails_after_bounded_retries() {
        let s = Scratch::new("w1");
        std::fs::remove_file(s.paths.host("/var/run/containerd/containerd.sock")).unwrap();
        assert_eq!(s.run(), Ending::Failed);
        let status = s.status();
        let step = status.steps.last().unwrap();
        assert_eq!(step.name, "runtime");
        let error = step.error.as_deref().unwrap();
        assert!(
            error.contains("/var/run/containerd/containerd.sock") && error.contains("journalctl -u containerd.service"),
            "{error}"
        );
        assert_eq!(s.sleeper.0.lock().unwrap().len(), 2, "three tries, two pauses");
    }
}
