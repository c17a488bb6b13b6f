//! `piha-agent certs`: kubeadm's leaf certificates (the API server's, the
//! kubeconfigs', etcd's) last a year; the CAs ten. On a control plane,
//! `piha-certs.timer` runs this daily: it asks kubeadm for every
//! certificate's expiry (`kubeadm certs check-expiration -o json`), renews
//! them all (`kubeadm certs renew all`) once the first expires within
//! `--renew-before` days (default 30), restarts the control-plane static
//! pods so they load the new certificates (their manifests are moved out of
//! /etc/kubernetes/manifests until the kubelet has stopped them, then back),
//! and writes the dates into status.json's `certificates`, so `piha status`
//! shows them from the workstation. Nothing happens on a node that has not
//! run kubeadm as a control plane.
//!
//! The kubelet's own client certificate is not kubeadm's to renew: the
//! kubelet rotates it itself (`rotateCertificates: true` in the rendered
//! KubeletConfiguration).

use std::path::Path;

use anyhow::{Context, bail};
use piha_config::status::{Certificates, Status};
use piha_runner::Cmd;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::clock::rfc3339;
use crate::paths::{KUBERNETES_DIR, STATIC_PODS_PARKED};
use crate::steps::Env;
use piha_atomic as atomic;

/// Renew when the first certificate expires within this many days.
pub const DEFAULT_RENEW_BEFORE_DAYS: u64 = 30;
const DAY: u64 = 86_400;

/// What `kubeadm certs check-expiration -o json` prints (output.kubeadm.k8s.io
/// CertificateExpirationInfo); only the fields used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExpirationInfo {
    #[serde(default)]
    certificates: Vec<Certificate>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Certificate {
    name: String,
    expiration_date: String,
    #[serde(default)]
    externally_managed: bool,
    #[serde(default)]
    missing: bool,
}

/// The certificate that expires first: its name and when (unix seconds).
pub fn first_expiry(env: &Env) -> anyhow::Result<(String, u64)> {
    let out = env
        .runner
        .run(&Cmd::new("kubeadm").args(["certs", "check-expiration", "-o", "json"]))
        .context("asking kubeadm when the certificates expire")?;
    first_of(&out.stdout_str())
}

fn first_of(json: &str) -> anyhow::Result<(String, u64)> {
    let info: ExpirationInfo = serde_json::from_str(json).context("reading `kubeadm certs check-expiration -o json`")?;
    let mut first: Option<(String, u64)> = None;
    for c in info.certificates.iter().filter(|c| !c.externally_managed && !c.missing) {
        let at = OffsetDateTime::parse(&c.expiration_date, &Rfc3339)
            .with_context(|| format!("{}: expirationDate {:?} is not RFC 3339", c.name, c.expiration_date))?;
        let at = u64::try_from(at.unix_timestamp()).unwrap_or(0);
        if first.as_ref().is_none_or(|(_, t)| at < *t) {
            first = Some((c.name.clone(), at));
        }
    }
    first.context("kubeadm listed no certificate it manages")
}

/// Checks, renews if due, reports. Returns the report written to status.json.
pub fn run(env: &Env, renew_before_days: u64) -> anyhow::Result<Certificates> {
    // A run cut off while the manifests were parked (a power cut in the
    // 30 s) left the control plane stopped: put them back first.
    unpark(env)?;
    if !env.paths.host(&format!("{KUBERNETES_DIR}/manifests/kube-apiserver.yaml")).exists()
        && !env.paths.host(&format!("{KUBERNETES_DIR}/pki/apiserver.crt")).exists()
    {
        bail!("this node runs no control plane (no kube-apiserver manifest or certificate): nothing to renew");
    }
    let now = env.clock.now();
    let (name, expires) = first_expiry(env)?;
    let mut report = Certificates {
        checked: now,
        first: name.clone(),
        expires,
        renewed: previous(env).and_then(|c| c.renewed),
    };
    if expires > now.saturating_add(renew_before_days.saturating_mul(DAY)) {
        log::info!(
            "certificates: the first to expire is {name}, on {}; nothing to do",
            rfc3339(expires)
        );
        write(env, &report);
        return Ok(report);
    }
    log::warn!(
        "certificates: {name} expires on {} (within {renew_before_days} days): renewing every certificate kubeadm manages",
        rfc3339(expires)
    );
    env.runner
        .run(&Cmd::new("kubeadm").args(["certs", "renew", "all"]))
        .context("kubeadm certs renew all")?;
    restart_static_pods(env)?;
    let (name, expires) = first_expiry(env)?;
    if expires <= now.saturating_add(renew_before_days.saturating_mul(DAY)) {
        bail!("kubeadm renewed the certificates, yet {name} still expires on {}", rfc3339(expires));
    }
    report.first = name;
    report.expires = expires;
    report.renewed = Some(now);
    log::info!(
        "certificates renewed; the first to expire now is {}, on {}",
        report.first,
        rfc3339(expires)
    );
    write(env, &report);
    Ok(report)
}

/// The control-plane pods load their certificates at start: the kubelet
/// stops a static pod whose manifest is gone and starts it again when it is
/// back. The manifests are parked beside the directory (same filesystem, so
/// each move is a rename) and come back one by one, etcd last out and first in.
fn restart_static_pods(env: &Env) -> anyhow::Result<()> {
    let manifests = env.paths.host(&format!("{KUBERNETES_DIR}/manifests"));
    let parked = env.paths.host(STATIC_PODS_PARKED);
    let Some(mut names) = names_in(&manifests)? else {
        return Ok(());
    };
    names.retain(|n| n.ends_with(".yaml"));
    names.sort_by_key(|n| (n.starts_with("etcd"), n.clone()));
    atomic::create_dirs(&parked, atomic::Perm::root(0o700)).with_context(|| format!("creating {}", parked.display()))?;
    let parked_all = names.iter().try_for_each(|n| park(&manifests.join(n), &parked.join(n)));
    if parked_all.is_ok() {
        // The kubelet looks at the directory every 20 s (fileCheckFrequency).
        env.sleeper.sleep(std::time::Duration::from_secs(30));
    }
    // Whatever happened, every manifest goes back.
    unpark(env)?;
    parked_all?;
    log::info!("restarted the control-plane static pods ({})", names.join(", "));
    Ok(())
}

/// Moves every parked manifest back, etcd first; removes the empty parking
/// directory. Nothing parked: nothing to do.
fn unpark(env: &Env) -> anyhow::Result<()> {
    let manifests = env.paths.host(&format!("{KUBERNETES_DIR}/manifests"));
    let parked = env.paths.host(STATIC_PODS_PARKED);
    let Some(mut names) = names_in(&parked)? else {
        return Ok(());
    };
    names.sort_by_key(|n| (!n.starts_with("etcd"), n.clone()));
    if !names.is_empty() {
        log::warn!(
            "putting back the static pod manifests parked in {}: {}",
            parked.display(),
            names.join(", ")
        );
    }
    for n in &names {
        park(&parked.join(n), &manifests.join(n))?;
    }
    std::fs::remove_dir(&parked).with_context(|| format!("removing {}", parked.display()))?;
    Ok(())
}

/// The names in a directory; `None` when it does not exist.
fn names_in(dir: &Path) -> anyhow::Result<Option<Vec<String>>> {
    match std::fs::read_dir(dir) {
        Ok(d) => Ok(Some(
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
    }
}

fn park(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    if let Some(dir) = to.parent() {
        atomic::sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

fn read_status(env: &Env) -> Option<Status> {
    let text = std::fs::read_to_string(env.paths.status_file()).ok()?;
    serde_json::from_str(&text).ok()
}

fn previous(env: &Env) -> Option<Certificates> {
    read_status(env).and_then(|s| s.certificates)
}

/// The report into the card's status.json, the rest of it kept. A card that
/// cannot be written is logged, not fatal (as the agent's own reports).
fn write(env: &Env, report: &Certificates) {
    let Some(mut status) = read_status(env) else {
        log::warn!("no readable status.json on the card; the certificate dates are only in the journal");
        return;
    };
    status.certificates = Some(report.clone());
    status.updated = env.clock.now();
    match serde_json::to_string_pretty(&status) {
        Ok(mut text) => {
            text.push('\n');
            if let Err(e) = atomic::write(&env.paths.status_file(), text.as_bytes(), None) {
                log::error!("cannot write {}: {e}", env.paths.status_file().display());
            }
        }
        Err(e) => log::error!("serializing status: {e}"),
    }
}

/// `piha-agent certs`: the real runner, clock and sleeper.
pub fn command(opts: &crate::cli::CertsOpts) -> anyhow::Result<()> {
    let paths = crate::paths::Paths::new(&opts.paths.root, &opts.paths.config_dir);
    let timings = crate::steps::Timings::default();
    let env = Env {
        paths: &paths,
        runner: &piha_runner::SystemRunner,
        probe: &crate::api_wait::TcpProbe::default(),
        sleeper: &crate::retry::ThreadSleeper,
        clock: &crate::clock::SystemClock,
        timings: &timings,
    };
    let r = run(&env, opts.renew_before)?;
    println!(
        "first to expire: {} on {}{}",
        r.first,
        rfc3339(r.expires),
        r.renewed.map(|t| format!(" (renewed {})", rfc3339(t))).unwrap_or_default()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use piha_runner::Output;

    use super::{DAY, first_of, run};
    use crate::testing::Scratch;

    fn expiration(at: &str) -> String {
        format!(
            r#"{{"kind":"CertificateExpirationInfo","apiVersion":"output.kubeadm.k8s.io/v1alpha3","certificates":[
              {{"name":"admin.conf","expirationDate":"2027-11-14T22:13:20Z","residualTime":1,"caName":"ca","externallyManaged":false}},
              {{"name":"apiserver","expirationDate":"{at}","residualTime":1,"caName":"ca","externallyManaged":false}},
              {{"name":"front-proxy-client","expirationDate":"2020-01-01T00:00:00Z","residualTime":0,"caName":"front-proxy-ca","externallyManaged":true}}],
              "certificateAuthorities":[{{"name":"ca","expirationDate":"2033-11-14T22:13:20Z","residualTime":1,"externallyManaged":false}}]}}"#
        )
    }

    fn answer(s: &Scratch, json: &str) {
        s.runner.rec.respond(
            "kubeadm",
            Ok(Output {
                stdout: json.as_bytes().to_vec(),
                stderr: Vec::new(),
            }),
        );
    }

    /// A control plane that has run kubeadm (its API server's manifest as
    /// kubeadm leaves it), with its status.json.
    fn control_plane() -> Scratch {
        let s = Scratch::new("cp1");
        assert_eq!(s.run(), crate::agent::Ending::Done);
        let manifests = s.paths.host("/etc/kubernetes/manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("kube-apiserver.yaml"), "kind: Pod\n").unwrap();
        s.clear_commands();
        s
    }

    #[test]
    fn the_first_expiry_is_the_earliest_certificate_kubeadm_manages() {
        let (name, at) = first_of(&expiration("2027-06-01T00:00:00Z")).unwrap();
        assert_eq!((name.as_str(), at), ("apiserver", 1_811_808_000));
    }

    /// Far from expiry: the dates are reported, nothing renewed.
    #[test]
    fn far_from_expiry_only_reports() {
        let s = control_plane();
        // The clock reads 2023-11-14; apiserver expires 2024-11-13.
        *s.clock.now.lock().unwrap() = 1_700_000_000;
        answer(&s, &expiration("2024-11-13T00:00:00Z"));
        let r = run(&s.env(), 30).unwrap();
        assert_eq!((r.first.as_str(), r.expires, r.renewed), ("apiserver", 1_731_456_000, None));
        assert_eq!(s.commands(), ["kubeadm certs check-expiration -o json"]);
        let c = s.status().certificates.unwrap();
        assert_eq!(c.expires, 1_731_456_000);
        // The agent's next boot keeps what the check found.
        assert_eq!(s.run(), crate::agent::Ending::Done);
        assert_eq!(s.status().certificates.unwrap().expires, 1_731_456_000);
    }

    /// The clock moved to 20 days before expiry: everything is renewed, the
    /// static pods restarted (manifests parked and back), and the new dates reported.
    #[test]
    fn within_the_window_everything_is_renewed_and_the_pods_restarted() {
        let s = control_plane();
        let expires = 1_731_456_000;
        *s.clock.now.lock().unwrap() = expires - 20 * DAY - 60;
        let manifests = s.paths.host("/etc/kubernetes/manifests");
        for m in ["etcd.yaml", "kube-apiserver.yaml", "kube-scheduler.yaml"] {
            std::fs::create_dir_all(&manifests).unwrap();
            std::fs::write(manifests.join(m), "kind: Pod\n").unwrap();
        }
        answer(&s, &expiration("2024-11-13T00:00:00Z"));
        answer(&s, ""); // kubeadm certs renew all
        answer(&s, &expiration("2025-10-24T00:00:00Z"));
        let r = run(&s.env(), 30).unwrap();
        assert_eq!(
            s.commands(),
            [
                "kubeadm certs check-expiration -o json",
                "kubeadm certs renew all",
                "kubeadm certs check-expiration -o json"
            ]
        );
        assert_eq!(r.renewed, Some(expires - 20 * DAY));
        assert_eq!(r.expires, 1_761_264_000);
        let mut back: Vec<String> = std::fs::read_dir(&manifests)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        back.sort();
        assert_eq!(back, ["etcd.yaml", "kube-apiserver.yaml", "kube-scheduler.yaml"]);
        assert_eq!(
            s.sleeper.0.lock().unwrap().last().map(|d| d.as_secs()),
            Some(30),
            "the kubelet was given time to stop the pods"
        );
        assert_eq!(s.status().certificates.unwrap().renewed, Some(expires - 20 * DAY));
    }

    /// A run cut off while the manifests were parked: the next run puts them back first.
    #[test]
    fn manifests_left_parked_by_a_cut_off_run_go_back() {
        let s = control_plane();
        let parked = s.paths.host(crate::paths::STATIC_PODS_PARKED);
        std::fs::create_dir_all(&parked).unwrap();
        std::fs::rename(
            s.paths.host("/etc/kubernetes/manifests/kube-apiserver.yaml"),
            parked.join("kube-apiserver.yaml"),
        )
        .unwrap();
        std::fs::write(parked.join("etcd.yaml"), "kind: Pod\n").unwrap();
        *s.clock.now.lock().unwrap() = 1_700_000_000;
        answer(&s, &expiration("2024-11-13T00:00:00Z"));
        run(&s.env(), 30).unwrap();
        assert!(s.paths.host("/etc/kubernetes/manifests/kube-apiserver.yaml").exists());
        assert!(s.paths.host("/etc/kubernetes/manifests/etcd.yaml").exists());
        assert!(!parked.exists());
    }

    /// A renewal that did not move the date is an error, not a silent success.
    #[test]
    fn a_renewal_that_changed_nothing_fails() {
        let s = control_plane();
        *s.clock.now.lock().unwrap() = 1_731_456_000 - DAY;
        answer(&s, &expiration("2024-11-13T00:00:00Z"));
        answer(&s, "");
        answer(&s, &expiration("2024-11-13T00:00:00Z"));
        let err = format!("{:#}", run(&s.env(), 30).unwrap_err());
        assert!(err.contains("still expires"), "{err}");
    }

    #[test]
    fn a_node_without_a_control_plane_has_nothing_to_renew() {
        let s = Scratch::new("w1");
        let err = format!("{:#}", run(&s.env(), 30).unwrap_err());
        assert!(err.contains("runs no control plane"), "{err}");
    }
}
