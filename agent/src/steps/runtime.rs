//! runtime: configure containerd or CRI-O (systemd cgroups, matching the
//! kubelet's `cgroupDriver: systemd`), start it, and wait for its socket.
//!
//! Idempotent: the config is rewritten only when it differs, the service is
//! restarted only then, and `enable --now` on a running service does nothing.

use std::os::unix::fs::FileTypeExt;

use anyhow::Context;
use piha_config::node::NodeConfig;
use piha_config::render;

use super::Env;
use crate::files;
use crate::retry::retry;
use crate::units;

pub fn run(env: &Env, cfg: &NodeConfig) -> anyhow::Result<()> {
    let runtime = cfg.cluster.runtime;
    let rendered = render::runtime_files(cfg).context("rendering the container runtime's configuration")?;
    let changed = files::apply(env.paths, &rendered)?;
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

#[cfg(test)]
mod tests {
    use piha_config::render::CONTAINERD_CONFIG;

    use crate::agent::Ending;
    use crate::testing::Scratch;

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
