//! `piha kubeconfig --cluster FILE [--out FILE] [--days N]`: an admin
//! kubeconfig for this workstation, minted from the cluster CA in `secrets/`
//! (`day2::kubeconfig`), written whole (temp file, then rename) with mode 0600.

use anyhow::Context;
use piha_atomic::{self as atomic, Perm};
use piha_config::secrets::CA_CRT;

use crate::card::secrets::Secrets;
use crate::cli::KubeconfigOpts;
use crate::day2::kubeconfig;
use crate::inputs::cluster;

pub fn run(opts: &KubeconfigOpts) -> anyhow::Result<()> {
    let cluster_path = &opts.cluster.cluster;
    let cluster = cluster::load_cluster(cluster_path)?;
    let secrets = Secrets::for_cluster(cluster_path, &opts.cluster.secrets_dir(), &cluster)?;
    // The CA certificate must be the one the cards carry (its hash is in
    // every node's discovery pin); a mismatch means mixed-up secrets.
    secrets.ca_cert_hash()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "workstation".to_string());
    let user = format!("piha-admin@{host}");
    let group = kubeconfig::admin_group(&cluster.kubernetes.version);
    let client = kubeconfig::client_cert(&cluster, &secrets, &user, group, opts.days)?;
    let text = kubeconfig::render(&cluster, &secrets.read(CA_CRT)?, &client, &user)?;
    let out = opts.out.clone().unwrap_or_else(|| kubeconfig::default_out(cluster_path, &cluster));
    let perm = Perm {
        mode: 0o600,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
    };
    atomic::write(&out, text.as_bytes(), Some(perm)).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} (mode 0600): user {user} in group {group}, server https://{}:{}, valid {} days\nuse it: export KUBECONFIG={}",
        out.display(),
        cluster.api.vip,
        cluster.api.port,
        opts.days,
        out.display()
    );
    Ok(())
}
