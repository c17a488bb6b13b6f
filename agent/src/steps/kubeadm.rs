//! What the three kubeadm roles share: the role's files, the PKI from the
//! card, the kubelet unit, and running kubeadm so that a power cut or a
//! failure in the middle is recovered.
//!
//! kubeadm init/join are not idempotent: a half-done run leaves manifests,
//! kubeconfigs, certificates and etcd data that make the next run fail its
//! preflight checks. So before running kubeadm the step records the mark
//! `kubeadm-started`, and after it succeeded `kubeadm-done`. If a run finds
//! `kubeadm-started` without `kubeadm-done`, or kubeadm's files on a node
//! whose state does not say it ran (state reset by hand, re-stamped card),
//! it first runs `kubeadm reset -f`. That also empties /etc/kubernetes/pki,
//! so the CAs are placed again afterwards, every time.
//!
//! The window between kubeadm succeeding and `kubeadm-done` being saved is
//! milliseconds; a power cut exactly there costs a reset and a re-run, which
//! is safe for every role (a re-joining node may have to wait for the cluster
//! to see its old Node object NotReady, which the join retries cover).

use std::net::SocketAddrV4;

use anyhow::Context;
use piha_config::node::NodeConfig;
use piha_config::render::{self, KUBEADM_CONFIG};
use piha_config::secrets::for_role;
use piha_runner::Cmd;

use super::Env;
use crate::api_wait::wait_for_api;
use crate::config_partition;
use crate::files;
use crate::paths::{ADMIN_CONF, BOOTSTRAP_KUBELET_CONF, KUBELET_CONF, KUBERNETES_DIR, PKI_DIR};
use crate::state::Store;
use crate::units;
use piha_atomic::{self as atomic, Perm};

pub const STARTED: &str = "kubeadm-started";
pub const DONE: &str = "kubeadm-done";

/// The realServer unit (overlays/agent): VIP/32 on lo plus the ARP sysctls.
pub const REALSERVER_UNIT: &str = "piha-realserver.service";
/// The health endpoint the directors check (overlays/agent): 200 only while
/// the API server is ready and the VIP is on lo.
pub const APICHECK_UNIT: &str = "piha-apicheck.service";
/// The daily check and renewal of kubeadm's certificates (`piha-agent certs`).
pub const CERTS_TIMER: &str = "piha-certs.timer";

/// Where distributions install the kubelet unit.
const KUBELET_UNITS: [&str; 3] = [
    "/etc/systemd/system/kubelet.service",
    "/usr/lib/systemd/system/kubelet.service",
    "/lib/systemd/system/kubelet.service",
];

/// Writes the role's files (kubeadm config with the card's token and CA
/// hash, the VIP file on control planes). Returns the token, for
/// [`forget_token`] once kubeadm has run.
pub fn write_role_files(env: &Env, cfg: &NodeConfig) -> anyhow::Result<String> {
    let secrets = config_partition::join_secrets(env.paths)?;
    let rendered = render::role_files(cfg, Some(&secrets)).context("rendering the kubeadm configuration")?;
    files::apply(env.paths, &rendered)?;
    Ok(secrets.token)
}

/// Enables the kubelet so it starts on later boots. The image is the same for
/// every role and the preset leaves the kubelet off (a director must not run
/// it); kubeadm starts it now but does not enable it. The test profile has no
/// kubelet (its recording kubeadm stands in), hence "if installed".
pub fn enable_kubelet(env: &Env) -> anyhow::Result<()> {
    if KUBELET_UNITS.iter().any(|u| env.paths.host(u).exists()) {
        env.runner.run(&units::enable("kubelet.service")).context("enabling the kubelet")?;
    } else {
        log::warn!("kubelet.service is not installed; not enabling it (only the test profile lacks it)");
    }
    Ok(())
}

/// What an earlier, unrecorded kubeadm run leaves behind.
pub fn leftovers(env: &Env) -> Vec<String> {
    let mut found = Vec::new();
    let manifests = env.paths.host(&format!("{KUBERNETES_DIR}/manifests"));
    if std::fs::read_dir(&manifests).map(|mut d| d.next().is_some()).unwrap_or(false) {
        found.push(format!("{KUBERNETES_DIR}/manifests/"));
    }
    for f in [ADMIN_CONF, KUBELET_CONF, "/var/lib/etcd/member"] {
        if env.paths.host(f).exists() {
            found.push(f.to_string());
        }
    }
    found
}

/// Runs `kubeadm reset -f` if an earlier run started kubeadm and did not
/// finish it, or left its files behind.
pub fn reset_if_needed(env: &Env, store: &Store, step: &str) -> anyhow::Result<()> {
    let found = leftovers(env);
    let started = store.has_mark(step, STARTED);
    if !started && found.is_empty() {
        return Ok(());
    }
    let why = if started {
        "an earlier kubeadm run did not finish".to_string()
    } else {
        format!("kubeadm left {}", found.join(", "))
    };
    log::warn!("{why}: running `kubeadm reset -f` before trying again");
    env.runner
        .run(&Cmd::new("kubeadm").args(["reset", "-f"]))
        .context("cleaning up an unfinished kubeadm run")?;
    Ok(())
}

/// Places the CAs and service-account keys from the card under
/// /etc/kubernetes/pki: keys 0600, certificates 0644, so kubeadm init and
/// join --control-plane reuse them (nothing is uploaded or copied between nodes).
pub fn place_pki(env: &Env, cfg: &NodeConfig) -> anyhow::Result<()> {
    for secret in for_role(cfg.node.role).iter().filter(|s| s.pki) {
        let contents = config_partition::read_secret(env.paths, *secret)?;
        let rel = secret.rel.strip_prefix("pki/").unwrap_or(secret.rel);
        let dest = env.paths.host(&format!("{PKI_DIR}/{rel}"));
        if let Some(dir) = dest.parent() {
            atomic::create_dirs(dir, Perm::root(0o755)).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mode = if secret.private { 0o600 } else { 0o644 };
        atomic::write(&dest, &contents, Some(Perm::root(mode))).with_context(|| format!("writing {}", dest.display()))?;
    }
    log::info!("placed the cluster CAs and service-account keys under {PKI_DIR}");
    Ok(())
}

/// kubeadm succeeded: from this moment the node is a member of the cluster.
/// `kubeadm-done` and `joined` are saved together, before anything else
/// runs (the CNI apply, the realServer), so a later failure or a re-stamped
/// card can never lead to `kubeadm reset` on a member (see `steps::identity`).
pub fn record_success(store: &mut Store, step: &str) -> anyhow::Result<()> {
    store.state.add_mark(step, DONE);
    store.state.joined = store.state.identity.clone();
    store
        .save()
        .with_context(|| format!("recording that kubeadm succeeded in step {step}"))
}

/// What kubeadm join says when discovery's token is unknown or expired
/// (kubeadm's discovery/token package).
pub const TOKEN_EXPIRED: &str = "is invalid for this cluster or it has expired";

/// What the bootstrap token becomes in /etc/piha/kubeadm.yaml once kubeadm
/// has run with it.
pub const TOKEN_REMOVED: &str = "removed-by-piha-agent-after-kubeadm";

/// Once kubeadm has run, this node needs the bootstrap token no more: it
/// leaves /etc/piha/kubeadm.yaml (the file stays, to show what kubeadm was
/// given), and kubeadm's bootstrap kubeconfig goes once the kubelet has its
/// own. A copy of the node's disk then carries no token. Idempotent.
pub fn forget_token(env: &Env, token: &str) -> anyhow::Result<()> {
    let path = env.paths.host(KUBEADM_CONFIG);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.contains(token) => {
            let text = text.replace(token, TOKEN_REMOVED);
            atomic::write(&path, text.as_bytes(), Some(Perm::root(0o600))).with_context(|| format!("writing {}", path.display()))?;
            log::info!("removed the bootstrap token from {KUBEADM_CONFIG}: kubeadm has run");
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let bootstrap = env.paths.host(BOOTSTRAP_KUBELET_CONF);
    if bootstrap.exists() && env.paths.host(KUBELET_CONF).exists() {
        std::fs::remove_file(&bootstrap).with_context(|| format!("removing {}", bootstrap.display()))?;
        log::info!("removed {BOOTSTRAP_KUBELET_CONF}: the kubelet has its own credentials");
    }
    Ok(())
}

/// `kubeadm init|join --config /etc/piha/kubeadm.yaml`. Never
/// `--upload-certs`: the CAs are already on every control plane.
pub fn command(verb: &str) -> Cmd {
    Cmd::new("kubeadm").args([verb, "--config", KUBEADM_CONFIG])
}

/// Brings up the realServer: VIP/32 on lo and the ARP sysctls, then the
/// health endpoint through which the directors admit this node once its API
/// server is ready. Both enabled, so they come back at every boot; `--now` is
/// a no-op when they are already up. The endpoint checks the VIP and the API
/// itself, so its order here only saves the directors a few failed checks.
pub fn start_realserver(env: &Env) -> anyhow::Result<()> {
    env.runner
        .run(&units::enable_now(REALSERVER_UNIT))
        .context("bringing up the realServer VIP on lo")?;
    env.runner
        .run(&units::enable_now(APICHECK_UNIT))
        .context("starting the health endpoint the directors check (piha-apicheck.service)")?;
    Ok(())
}

/// A control plane's daily check and renewal of kubeadm's certificates.
pub fn enable_cert_timer(env: &Env) -> anyhow::Result<()> {
    env.runner
        .run(&units::enable_now(CERTS_TIMER))
        .context("starting the daily certificate check (piha-certs.timer)")?;
    Ok(())
}

/// `kubeadm join` for a worker or a joining control plane: waits for the API
/// at the VIP (`Timings::remote_api`), then joins; a failed join is reset and
/// tried again a few times (e.g. etcd learner promotion timing out on a slow
/// card), then the step fails and the agent tries it again later.
/// What both joining roles do: the role's files, kubelet enabled, then (once:
/// the DONE mark makes it idempotent) wait for the API at VIP:port and
/// `kubeadm join`.
pub fn join_once(env: &Env, store: &mut Store, step: &str, cfg: &NodeConfig) -> anyhow::Result<()> {
    let token = write_role_files(env, cfg)?;
    enable_kubelet(env)?;
    if !store.has_mark(step, DONE) {
        let api = SocketAddrV4::new(cfg.cluster.vip, cfg.cluster.api_port);
        join(env, store, step, cfg, api)?;
        record_success(store, step)?;
    }
    forget_token(env, &token)
}

pub fn join(env: &Env, store: &mut Store, step: &str, cfg: &NodeConfig, api: SocketAddrV4) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        wait_for_api("the cluster's API", api, &env.timings.remote_api, env.probe, env.sleeper).map_err(anyhow::Error::msg)?;
        reset_if_needed(env, store, step)?;
        if cfg.node.role == piha_config::cluster::Role::ControlPlane {
            place_pki(env, cfg)?;
        }
        store.mark(step, STARTED)?;
        match env.runner.run(&command("join")) {
            Ok(_) => return Ok(()),
            Err(e) if attempt < env.timings.join_attempts => {
                log::warn!(
                    "kubeadm join failed (try {attempt} of {}): {e}; trying again",
                    env.timings.join_attempts
                );
                env.sleeper.sleep(env.timings.join_pause);
                attempt += 1;
            }
            Err(e) => {
                if e.stderr_tail().is_some_and(|t| t.contains(TOKEN_EXPIRED)) {
                    return Err(e).context(
                        "kubeadm join: the cluster no longer knows this card's bootstrap token (it lives `kubernetes.bootstrap_token_ttl` \
                         from kubeadm init, or was deleted) (fix: on a control plane, `sudo kubeadm token create TOKEN` with the token \
                         from the workstation's secrets/bootstrap-token: this node tries again by itself and joins)",
                    );
                }
                return Err(e).with_context(|| {
                    format!("kubeadm join failed {attempt} times; tried again shortly (`journalctl -u kubelet` on this node says more)")
                });
            }
        }
    }
}
