//! `piha init`: the commented example cluster file (if there is none) and the
//! cluster's secrets (once); `piha rotate-secrets --yes`: new secrets.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use piha_atomic::AtomicFile;
use piha_config::cluster::KeyAlgorithm;

use crate::card::secrets::{self, Outcome, Secrets};
use crate::cli::{InitOpts, RotateSecretsOpts};
use crate::inputs::cluster;

/// The example written by `piha init` when the cluster file does not exist yet.
pub const EXAMPLE: &str = include_str!("../../../examples/homelab.yaml");

pub fn run(opts: &InitOpts) -> anyhow::Result<()> {
    let path = &opts.cluster.cluster;
    let dir = opts.cluster.secrets_dir();
    let wrote_example = if path.exists() {
        false
    } else {
        // Validate before writing, so a broken data directory writes nothing.
        cluster::load_cluster_text(path, EXAMPLE)?;
        write_new(path, EXAMPLE)?;
        println!("wrote the example cluster file {}", path.display());
        true
    };
    let cluster = cluster::load_cluster(path)?;
    match secrets::ensure(path, &dir, &cluster)? {
        Outcome::AlreadyPresent => {
            println!(
                "{} already holds the secrets of cluster `{}`; nothing changed",
                dir.display(),
                cluster.name
            );
        }
        Outcome::Created => {
            let s = Secrets::for_cluster(path, &dir, &cluster)?;
            println!(
                "generated the secrets of cluster `{}` in {} ({} CAs, service-account key, bootstrap token)",
                cluster.name,
                dir.display(),
                algorithm_name(cluster.kubernetes.key_algorithm)
            );
            println!("discovery hash: {}", s.ca_cert_hash()?);
            println!("keep {} private and backed up: it holds the cluster's CA keys", dir.display());
        }
    }
    if wrote_example {
        println!(
            "next: edit {} (names, addresses, SSH key) and check it with `piha validate --cluster {0}`; \
             if you change `name:`, delete {} first and run `piha init` again",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// What rotation leaves as it was, said plainly after every rotation.
const ROTATE_DOES_NOT_REVOKE: &str = "\
What this does NOT revoke: a cluster already running keeps its CAs, its service-account key \
and the old bootstrap token (valid until its ttl ends, in the cluster's etcd), and every card \
stamped before still holds the old secrets until its node scrubs them. To revoke the old token \
on a running cluster: `kubeadm token delete <token id>` on a control plane. Cards stamped \
with the new secrets can only join a cluster initialised from them.";

pub fn rotate(opts: &RotateSecretsOpts) -> anyhow::Result<()> {
    let path = &opts.cluster.cluster;
    let dir = opts.cluster.secrets_dir();
    if !opts.yes {
        bail!(
            "not replacing the secrets in {} without --yes: new CAs and a new bootstrap token mean every card stamped \
             before must be re-stamped, and a cluster that is already running keeps trusting only the old CAs \
             (fix: `piha rotate-secrets --cluster {} --yes`; the old secrets are kept in {0}.old-<unix time>)",
            dir.display(),
            path.display()
        );
    }
    let cluster = cluster::load_cluster(path)?;
    let old = secrets::rotate(&dir, &cluster)?;
    let s = Secrets::for_cluster(path, &dir, &cluster)?;
    println!(
        "replaced the secrets of cluster `{}` in {}; the old ones are in {}",
        cluster.name,
        dir.display(),
        old.display()
    );
    println!("discovery hash: {}", s.ca_cert_hash()?);
    println!("re-stamp every card with `piha stamp` before it boots");
    println!("{}", ROTATE_DOES_NOT_REVOKE);
    Ok(())
}

fn algorithm_name(alg: KeyAlgorithm) -> &'static str {
    match alg {
        KeyAlgorithm::Rsa2048 => "RSA-2048",
        KeyAlgorithm::EcdsaP256 => "ECDSA-P256",
    }
}

/// Writes a file that must not exist yet, atomically: a crash leaves no
/// half-written cluster file behind.
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = AtomicFile::create(path, None).with_context(|| format!("creating a file beside {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    match f.commit_new() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!("{} already exists; nothing was written", path.display()),
        other => other.with_context(|| format!("writing {}", path.display())),
    }
}

/// The example must stay valid: `piha init` hands it to every new user.
#[cfg(test)]
mod tests {
    use super::EXAMPLE;
    use piha_config::cluster::ClusterFile;

    #[test]
    fn example_parses() {
        let c = ClusterFile::parse(std::path::Path::new("cluster.yaml"), EXAMPLE).unwrap();
        assert_eq!(c.name, "homelab");
    }
}
