//! `piha render --cluster C --node N --out DIR`: writes, for review, exactly
//! the files the agent will write on node N, at their node paths under DIR
//! (`DIR/etc/hosts`, `DIR/etc/piha/kubeadm.yaml`, …). The agent calls the same
//! renderers (`piha_config::render`) with the node.yaml from its card.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use piha_atomic::AtomicFile;
use piha_config::cluster::Role;
use piha_config::render::{self, JoinSecrets, RenderedFile};

use crate::card;
use crate::card::secrets::Secrets;
use crate::cli::RenderOpts;
use crate::inputs::cluster;

pub fn run(opts: &RenderOpts) -> anyhow::Result<()> {
    let cluster_path = &opts.cluster.cluster;
    let cluster = cluster::load_cluster(cluster_path)?;
    let cfg = card::node_config(&cluster, cluster_path, &opts.node, &cluster.distro)?;
    // Directors get no secrets; everyone else needs the token and hash.
    let secrets = match cfg.node.role {
        Role::Director => None,
        Role::ControlPlane | Role::Worker => {
            let s = Secrets::for_cluster(cluster_path, &opts.cluster.secrets_dir(), &cluster)?;
            Some(JoinSecrets {
                token: s.token()?,
                ca_cert_hash: s.ca_cert_hash()?,
            })
        }
    };
    let files = render::node_files(&cfg, secrets.as_ref()).with_context(|| format!("rendering the files of {}", cfg.node.name))?;
    // Everything is rendered before the first byte is written.
    for f in &files {
        let path = write_file(&opts.out, f)?;
        println!("{:04o} {}", f.mode, path.display());
    }
    println!(
        "rendered {} files of {} ({}) into {}",
        files.len(),
        cfg.node.name,
        cfg.node.role.as_str(),
        opts.out.display()
    );
    Ok(())
}

/// Where a node path lands under `out`. Node paths are absolute and never
/// contain `..`; anything else is a bug in a renderer, refused here.
pub fn out_path(out: &Path, node_path: &str) -> anyhow::Result<PathBuf> {
    let rel = node_path
        .strip_prefix('/')
        .with_context(|| format!("node path {node_path} is not absolute"))?;
    if rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("node path {node_path} is not a plain absolute path");
    }
    Ok(out.join(rel))
}

/// Writes one file under `out` with its mode (replacing an older render).
fn write_file(out: &Path, f: &RenderedFile) -> anyhow::Result<PathBuf> {
    let path = out_path(out, &f.path)?;
    let dir = path.parent().expect("a file under out has a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut file = AtomicFile::create(&path, None).with_context(|| format!("creating {}", path.display()))?;
    file.file()
        .and_then(|t| t.set_permissions(fs::Permissions::from_mode(f.mode)))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    file.write_all(f.contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    file.commit().with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::out_path;

    #[test]
    fn node_paths_stay_under_out() {
        assert_eq!(out_path(Path::new("/o"), "/etc/hosts").expect("plain"), Path::new("/o/etc/hosts"));
        assert!(out_path(Path::new("/o"), "etc/hosts").is_err());
        assert!(out_path(Path::new("/o"), "/etc/../../x").is_err());
    }
}
