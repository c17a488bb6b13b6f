//! init-control-plane: the first control plane. First asks whether a
//! cluster with this card's CA already serves the VIP or any other control
//! plane's address (`existing_cluster`): if one does (the card was
//! re-flashed, the cluster lives on in the other control planes), it joins
//! that cluster as a control plane instead of making a second one. Otherwise
//! it places the CAs, runs
//! `kubeadm init`, brings up the realServer VIP once its own API server
//! answers, and applies the CNI manifest rendered from node.yaml (Flannel,
//! `piha_config::render::cni`), written with the role's files.
//!
//! Why the VIP goes up *while* kubeadm init runs: kubeadm's later phases
//! (uploading its config, the bootstrap token, the kubelet's registration)
//! talk to controlPlaneEndpoint = VIP:port. Before this node answers for the
//! VIP on lo, those packets go to the director, which can only forward them
//! back to this node, which (without the VIP) drops them: init would hang
//! until it times out. So kubeadm runs on a thread while this thread waits for
//! the local API server (127.0.0.1:port) and starts the realServer as soon as
//! it answers, before kubeadm needs the VIP. Unlike a joining control plane, nothing else
//! can be behind the VIP yet, so there is no one to "talk to itself" instead.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use anyhow::Context;
use piha_config::node::NodeConfig;
use piha_config::render::CNI_DIR;
use piha_runner::Cmd;

use super::kubeadm::{self, DONE, STARTED};
use super::{Env, Step};
use crate::agent::Refused;
use crate::api_wait::wait_for_api;
use crate::existing_cluster::{self, Found};
use crate::paths::ADMIN_CONF;
use crate::retry::retry;
use crate::state::Store;

/// Fact key in status.json's versions: which CNI manifests were applied.
pub const CNI_FACT: &str = "cni";

/// Marks: which way this node went, decided once per disk before its first
/// kubeadm run (so a later try never changes its mind half-way).
pub const VIP_FREE: &str = "vip-free-init";
pub const VIP_SERVED: &str = "vip-served-join";
pub use piha_config::status::INIT_FACT;

pub fn run(env: &Env, cfg: &NodeConfig, store: &mut Store) -> anyhow::Result<Vec<(String, String)>> {
    let step = Step::InitControlPlane.name();
    if cluster_already_serves(env, cfg, store, step)? {
        // Re-flashed (or replaced) first control plane: the cluster lives on
        // in the other control planes, and this node joins it like any of them.
        let mut joiner = cfg.clone();
        joiner.node.init = false;
        kubeadm::join_once(env, store, step, &joiner)?;
        kubeadm::start_realserver(env)?;
        kubeadm::enable_cert_timer(env)?;
        return Ok(vec![(
            INIT_FACT.to_string(),
            format!(
                "joined the cluster already serving at {}:{} instead of kubeadm init",
                cfg.cluster.vip, cfg.cluster.api_port
            ),
        )]);
    }
    let token = kubeadm::write_role_files(env, cfg)?;
    kubeadm::enable_kubelet(env)?;
    let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, cfg.cluster.api_port);
    let mut vip_up = false;
    if !store.has_mark(step, DONE) {
        kubeadm::reset_if_needed(env, store, step)?;
        kubeadm::place_pki(env, cfg)?;
        store.mark(step, STARTED)?;
        let (init, vip) = init_raising_vip(env, local);
        init?;
        // kubeadm init succeeded: recorded before anything else can fail
        // (raising the VIP included), so no later try ever resets a cluster
        // that other nodes may already have joined.
        kubeadm::record_success(store, step)?;
        vip_up = vip?;
    }
    kubeadm::forget_token(env, &token)?;
    if !vip_up {
        // kubeadm finished before this thread saw the API, or an earlier boot ran it.
        wait_for_api("the local API server", local, &env.timings.local_api, env.probe, env.sleeper).map_err(anyhow::Error::msg)?;
        kubeadm::start_realserver(env)?;
    }
    kubeadm::enable_cert_timer(env)?;
    let cni = apply_cni(env)?;
    Ok(vec![(CNI_FACT.to_string(), cni)])
}

/// Whether a cluster with this card's CA already serves the VIP (see
/// `existing_cluster`). Asked once, before the first kubeadm run on this disk.
fn cluster_already_serves(env: &Env, cfg: &NodeConfig, store: &mut Store, step: &str) -> anyhow::Result<bool> {
    if store.has_mark(step, VIP_SERVED) {
        return Ok(true);
    }
    // Not STARTED: a re-stamped board carries an artificial STARTED mark
    // (so kubeadm is reset first), and it must still ask.
    if store.has_mark(step, VIP_FREE) || store.has_mark(step, DONE) {
        return Ok(false);
    }
    let vip = SocketAddrV4::new(cfg.cluster.vip, cfg.cluster.api_port);
    match existing_cluster::probe_cluster(env, cfg)? {
        Found::Nobody(why) => {
            log::info!("no cluster serves {vip} yet ({why}): this node initialises it");
            store.mark(step, VIP_FREE)?;
            Ok(false)
        }
        Found::ThisCluster => {
            log::warn!(
                "an API server of this cluster (its certificate verifies against the card's CA) already serves {vip}: joining it instead of kubeadm init"
            );
            store.mark(step, VIP_SERVED)?;
            Ok(true)
        }
        Found::Foreign(said) => Err(Refused(format!(
            "{vip} is served by an API server whose certificate does not verify against this card's cluster CA: another cluster holds this \
             cluster's VIP, and initialising here would put two clusters behind one address (fix: give this cluster another `api.vip` in \
             the cluster file, or take the other cluster off {vip}; then re-stamp the card and reboot). openssl said: {said}"
        ))
        .into()),
        Found::Unclear(said) => anyhow::bail!(
            "could not tell whether a cluster already serves {vip} or the other control planes ({said}); not running kubeadm init on a guess"
        ),
    }
}

/// Runs `kubeadm init` and, concurrently, raises the VIP once the local API
/// server answers. Returns kubeadm's outcome and, apart, whether the VIP went
/// up during init (or why raising it failed): a failed VIP must not hide a
/// kubeadm init that worked.
fn init_raising_vip(env: &Env, local: SocketAddrV4) -> (anyhow::Result<()>, anyhow::Result<bool>) {
    let cmd = kubeadm::command("init");
    std::thread::scope(|scope| {
        let init = scope.spawn(|| env.runner.run(&cmd));
        let mut vip_up = Ok(false);
        let mut n = 1;
        while !init.is_finished() {
            if env.probe.answers(local).is_ok() {
                log::info!("the local API server answers at {local}; bringing up the VIP while kubeadm init finishes");
                vip_up = kubeadm::start_realserver(env).map(|()| true);
                break;
            }
            env.sleeper
                .sleep(env.timings.local_api.pause(n).min(std::time::Duration::from_secs(2)));
            n += 1;
        }
        let init = match init.join() {
            Ok(result) => result
                .map(drop)
                .context("kubeadm init failed; the next try resets and runs it again"),
            Err(_) => Err(anyhow::anyhow!("the thread running kubeadm init panicked")),
        };
        (init, vip_up)
    })
}

/// Applies every `*.yaml` under /etc/piha/cni in name order (the rendered
/// Flannel manifest, `10-flannel.yaml`); returns what was applied for the
/// report. `kubectl apply` is idempotent, so a retry after a power cut is safe.
/// An empty directory is reported, not an error: the cluster works once the
/// user applies a CNI of their choice.
fn apply_cni(env: &Env) -> anyhow::Result<String> {
    let dir = env.paths.host(CNI_DIR);
    let mut manifests: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
                .collect()
        })
        .unwrap_or_default();
    manifests.sort();
    if manifests.is_empty() {
        log::warn!("no CNI manifest in {CNI_DIR}: pods will not get networking until one is applied");
        return Ok(format!("none: no manifest in {CNI_DIR}; apply a CNI with kubectl"));
    }
    for m in &manifests {
        let path = Path::new(CNI_DIR).join(m);
        let cmd = Cmd::new("kubectl").args(["--kubeconfig", ADMIN_CONF, "apply", "-f"]).arg(&path);
        retry(&format!("applying {}", path.display()), &env.timings.cni_apply, env.sleeper, || {
            env.runner.run(&cmd)
        })
        .with_context(|| format!("applying the CNI manifest {}", path.display()))?;
    }
    Ok(manifests.join(", "))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use piha_config::render::{CNI_DIR, FLANNEL_MANIFEST, KUBEADM_CONFIG, VIP_FILE};

    use super::CNI_FACT;
    use crate::agent::Ending;
    use crate::steps::kubeadm::{self, DONE, STARTED};
    use crate::testing::{Scratch, TOKEN};

    #[test]
    fn init_places_pki_runs_kubeadm_then_raises_the_vip() {
        let s = Scratch::new("cp1");
        assert_eq!(s.run(), Ending::Done);
        let commands = s.commands();
        let init = s.position("kubeadm init").expect("kubeadm init ran");
        assert_eq!(commands[init], "kubeadm init --config /etc/piha/kubeadm.yaml");
        assert!(!commands.iter().any(|c| c.contains("--upload-certs")), "{commands:#?}");
        let answered = s.position("#probe 127.0.0.1:6443 answers").expect("the local API was probed");
        let vip = s
            .position("systemctl enable --now piha-realserver.service")
            .expect("the VIP came up");
        assert!(
            init < answered && answered < vip,
            "VIP only once the local API answers: {commands:#?}"
        );
        assert_eq!(commands.iter().filter(|c| c.contains("piha-realserver")).count(), 1);
        let check = s
            .position("systemctl enable --now piha-apicheck.service")
            .expect("the health endpoint came up");
        assert!(vip < check, "the directors' health endpoint with the VIP: {commands:#?}");
        assert_eq!(commands.iter().filter(|c| c.contains("piha-apicheck")).count(), 1);

        for (file, mode) in [
            ("ca.crt", 0o644),
            ("ca.key", 0o600),
            ("etcd/ca.crt", 0o644),
            ("etcd/ca.key", 0o600),
            ("front-proxy-ca.crt", 0o644),
            ("front-proxy-ca.key", 0o600),
            ("sa.key", 0o600),
            ("sa.pub", 0o644),
        ] {
            let path = format!("/etc/kubernetes/pki/{file}");
            assert_eq!(s.mode(&path), mode, "{path}");
            assert_eq!(s.read(&path), format!("test material for pki/{file}\n"));
        }
        assert!(!s.paths.host("/etc/kubernetes/pki/bootstrap-token").exists());
        assert_eq!(s.mode(KUBEADM_CONFIG), 0o600);
        // kubeadm init ran with the card's token (the QEMU tests read the
        // stand-in's copy of the config); then it left the file.
        let config = s.read(KUBEADM_CONFIG);
        assert!(!config.contains(TOKEN) && config.contains(kubeadm::TOKEN_REMOVED), "{config}");
        assert_eq!(s.read(VIP_FILE), "VIP=10.0.2.100\nAPI_PORT=6443\n");
        assert!(s.state().has_mark("init-control-plane", DONE));
        assert_eq!(s.status().versions.get(CNI_FACT).map(String::as_str), Some("10-flannel.yaml"));
    }

    #[test]
    fn the_rendered_flannel_manifest_is_applied_after_the_vip() {
        let s = Scratch::new("cp1");
        assert_eq!(s.run(), Ending::Done);
        assert_eq!(s.mode(FLANNEL_MANIFEST), 0o644);
        let manifest = s.read(FLANNEL_MANIFEST);
        // qemu-lab's kubernetes.pod_subnet, from node.yaml.
        assert!(manifest.contains("\"Network\": \"10.244.0.0/16\""), "{manifest}");
        assert!(manifest.contains("kind: DaemonSet\n"), "{manifest}");
        let applies: Vec<String> = s.commands().into_iter().filter(|c| c.starts_with("kubectl")).collect();
        assert_eq!(
            applies,
            ["kubectl --kubeconfig /etc/kubernetes/admin.conf apply -f /etc/piha/cni/10-flannel.yaml"]
        );
        let apply = s.position("kubectl").expect("kubectl ran");
        assert!(apply > s.position("systemctl enable --now piha-realserver.service").unwrap());
    }

    #[test]
    fn extra_manifests_beside_it_are_applied_in_name_order() {
        let s = Scratch::new("cp1");
        let dir = s.paths.host(CNI_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("20-extra.yaml"), "kind: List\n").unwrap();
        std::fs::write(dir.join("README"), "not a manifest").unwrap();
        assert_eq!(s.run(), Ending::Done);
        let applies: Vec<String> = s.commands().into_iter().filter(|c| c.starts_with("kubectl")).collect();
        assert_eq!(
            applies,
            [
                "kubectl --kubeconfig /etc/kubernetes/admin.conf apply -f /etc/piha/cni/10-flannel.yaml",
                "kubectl --kubeconfig /etc/kubernetes/admin.conf apply -f /etc/piha/cni/20-extra.yaml",
            ]
        );
        assert_eq!(
            s.status().versions.get(CNI_FACT).map(String::as_str),
            Some("10-flannel.yaml, 20-extra.yaml")
        );
        // Later boots still report it.
        assert_eq!(s.run(), Ending::Done);
        assert_eq!(
            s.status().versions.get(CNI_FACT).map(String::as_str),
            Some("10-flannel.yaml, 20-extra.yaml")
        );
    }

    #[test]
    fn a_failed_apply_is_retried() {
        let s = Scratch::new("cp1");
        s.runner
            .fail_once("kubectl", "The connection to the server 10.0.2.100:6443 was refused");
        assert_eq!(s.run(), Ending::Done);
        let applies = s.commands().into_iter().filter(|c| c.starts_with("kubectl")).count();
        assert_eq!(applies, 2, "{:#?}", s.commands());
    }

    #[test]
    fn an_interrupted_init_is_reset_before_trying_again() {
        let s = Scratch::new("cp1");
        s.runner
            .fail_once("kubeadm init", "[wait-control-plane] timed out waiting for the condition");
        assert_eq!(s.run(), Ending::Failed);
        let status = s.status();
        let step = status.steps.last().unwrap();
        assert_eq!(step.name, "init-control-plane");
        assert!(step.stderr_tail.as_deref().unwrap().contains("timed out waiting"), "{step:?}");
        assert!(s.state().has_mark("init-control-plane", STARTED));

        // kubeadm reset empties /etc/kubernetes/pki: the CAs must be placed again after it.
        std::fs::remove_file(s.paths.host("/etc/kubernetes/pki/ca.key")).unwrap();
        s.clear_commands();
        assert_eq!(s.run(), Ending::Done);
        let reset = s.position("kubeadm reset -f").expect("reset before retrying");
        assert!(reset < s.position("kubeadm init").unwrap());
        assert_eq!(
            std::fs::metadata(s.paths.host("/etc/kubernetes/pki/ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    #[test]
    fn leftovers_without_a_recorded_run_are_reset_too() {
        let s = Scratch::new("cp1");
        let manifests = s.paths.host("/etc/kubernetes/manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("kube-apiserver.yaml"), "kind: Pod\n").unwrap();
        assert_eq!(s.run(), Ending::Done);
        assert!(s.position("kubeadm reset -f").unwrap() < s.position("kubeadm init").unwrap());
    }

    /// A re-flashed first control plane finds its cluster at the VIP (a TLS
    /// handshake verified by the card's CA) and joins it instead of
    /// initialising a second cluster; the choice holds on later boots.
    #[test]
    fn a_cluster_already_at_the_vip_is_joined_not_initialised_again() {
        let s = Scratch::new("cp1");
        *s.runner.vip_tls.lock().unwrap() = None;
        assert_eq!(s.run(), Ending::Done);
        let commands = s.commands();
        let probe = s
            .position("timeout 10 openssl s_client -brief -verify_return_error -no_check_time -connect 10.0.2.100:6443 -CAfile")
            .unwrap();
        let join = s.position("kubeadm join --config /etc/piha/kubeadm.yaml").expect("joined");
        assert!(probe < join, "{commands:#?}");
        assert!(
            !commands.iter().any(|c| c.starts_with("kubeadm init") || c.starts_with("kubectl")),
            "{commands:#?}"
        );
        assert!(join < s.position("systemctl enable --now piha-realserver.service").unwrap());
        let config = s.read(KUBEADM_CONFIG);
        assert!(
            config.contains("kind: JoinConfiguration") && config.contains("controlPlane:"),
            "{config}"
        );
        assert!(!config.contains("InitConfiguration"), "{config}");
        assert!(
            s.status()
                .versions
                .get(super::INIT_FACT)
                .unwrap()
                .contains("instead of kubeadm init")
        );
        assert!(s.state().has_mark("init-control-plane", super::VIP_SERVED));

        // Later boots neither probe again nor change their mind.
        s.clear_commands();
        assert_eq!(s.run(), Ending::Done);
        assert!(
            !s.commands()
                .iter()
                .any(|c| c.contains("s_client") || c.starts_with("kubeadm join") || c.starts_with("kubeadm init")),
            "{:#?}",
            s.commands()
        );
    }

    /// The directors are down (nobody at the VIP) but cp3 still serves this
    /// cluster: found at its own address, and joined.
    #[test]
    fn a_cluster_found_at_another_control_planes_address_is_joined() {
        let s = Scratch::new("cp1");
        s.runner.tls_at.lock().unwrap().insert("10.0.2.13:6443".into(), None);
        assert_eq!(s.run(), Ending::Done);
        let probed: Vec<String> = s.commands().into_iter().filter(|c| c.contains("s_client")).collect();
        assert_eq!(probed.len(), 3, "the VIP, cp2, cp3: {probed:#?}");
        assert!(
            probed[1].contains("-connect 10.0.2.12:6443") && probed[2].contains("-connect 10.0.2.13:6443"),
            "{probed:#?}"
        );
        assert!(s.position("kubeadm join").is_some() && s.position("kubeadm init").is_none());
    }

    /// Nobody anywhere (the first day): every control plane was asked, then init.
    #[test]
    fn nobody_anywhere_means_init() {
        let s = Scratch::new("cp1");
        s.runner
            .tls_at
            .lock()
            .unwrap()
            .insert("10.0.2.12:6443".into(), Some("connect:errno=113\nNo route to host".into()));
        assert_eq!(s.run(), Ending::Done);
        assert_eq!(s.commands().iter().filter(|c| c.contains("s_client")).count(), 3);
        assert!(s.position("kubeadm init").is_some());
    }

    /// Another cluster's API server at the VIP: the node stops (no retry,
    /// nothing run), and status.json says what to do.
    #[test]
    fn another_clusters_api_at_the_vip_stops_the_node() {
        let s = Scratch::new("cp1");
        *s.runner.vip_tls.lock().unwrap() = Some(
            "verify error:num=20:unable to get local issuer certificate\nerror:0A000086:SSL routines::certificate verify failed".into(),
        );
        assert_eq!(s.run(), Ending::Failed);
        let error = s.status().error.unwrap();
        assert!(
            error.contains("does not verify against this card's cluster CA") && error.contains("api.vip"),
            "{error}"
        );
        assert!(
            !s.commands()
                .iter()
                .any(|c| c.starts_with("kubeadm init") || c.starts_with("kubeadm join"))
        );
        assert!(!s.paths.host("/etc/kubernetes/pki/ca.key").exists());
        // Refused: the card's CA keys leave it, as on every refusal.
        assert!(!s.card.path().join("secrets").exists());
        assert!(error.contains("secrets were overwritten and removed"), "{error}");
    }

    /// Neither answer (a reset mid-handshake): the step fails and is tried
    /// again, probing again, never initialising on a guess.
    #[test]
    fn an_unclear_answer_is_asked_again() {
        let s = Scratch::new("cp1");
        *s.runner.vip_tls.lock().unwrap() = Some("write:errno=104".into());
        assert_eq!(s.run(), Ending::Failed);
        assert!(
            s.status()
                .error
                .unwrap()
                .contains("could not tell whether a cluster already serves")
        );
        assert!(!s.commands().iter().any(|c| c.starts_with("kubeadm init")));
        *s.runner.vip_tls.lock().unwrap() = Some(crate::testing::VIP_REFUSED.into());
        assert_eq!(s.run(), Ending::Done);
        assert!(s.position("kubeadm init").is_some());
        assert!(s.state().has_mark("init-control-plane", super::VIP_FREE));
    }
}
