//! Reading the PIHA-CFG partition: `node.yaml` (validated with the shared
//! rules) and the `secrets/` a node needs until it has joined, and removing
//! those secrets once it has.

use std::io;

use anyhow::Context;
use piha_config::node::{CONFIG_LABEL, NodeConfig, secret_digest};
use piha_config::render::JoinSecrets;
use piha_config::secrets::{BOOTSTRAP_TOKEN, CA_CERT_HASH, CARD_DIR, SecretFile};

use crate::paths::Paths;
use piha_atomic as atomic;

/// How `piha stamp` is run, for fixes in messages.
const STAMP_HINT: &str = "piha stamp --cluster CLUSTER.yaml --node NAME TARGET";

/// Reads and validates `node.yaml`. The error is the whole report for
/// status.json: every problem with its file, field and fix.
pub fn read_node(paths: &Paths) -> Result<NodeConfig, String> {
    let file = paths.node_file();
    if !paths.config_dir.is_dir() {
        return Err(format!(
            "{}: the config partition is not there (fix: check that the disk this system runs from has a FAT partition \
             labelled {CONFIG_LABEL} and that boot-piha.mount mounted it; `journalctl -u boot-piha.mount` and `journalctl -t piha-cfg` say why not)",
            paths.config_dir.display()
        ));
    }
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("{}: not found (fix: stamp this card with `{STAMP_HINT}`)", file.display()));
        }
        Err(e) => {
            return Err(format!(
                "{}: cannot be read: {e} (fix: re-stamp the card with `{STAMP_HINT}`)",
                file.display()
            ));
        }
    };
    NodeConfig::parse(&file, &text).map_err(|problems| problems.to_string())
}

/// Reads one secret from the card.
pub fn read_secret(paths: &Paths, secret: SecretFile) -> anyhow::Result<Vec<u8>> {
    let path = paths.card_secret(secret.rel);
    std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (fix: re-stamp the card with `{STAMP_HINT}`: stamping copies the secrets `piha init` made; \
             they are removed from the card once a node is done)",
            path.display()
        )
    })
}

/// The bootstrap token and CA hash, trimmed (the renderer checks their format).
pub fn join_secrets(paths: &Paths) -> anyhow::Result<JoinSecrets> {
    let text = |s: SecretFile| -> anyhow::Result<String> {
        let bytes = read_secret(paths, s)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    };
    Ok(JoinSecrets {
        token: text(BOOTSTRAP_TOKEN)?,
        ca_cert_hash: text(CA_CERT_HASH)?,
    })
}

/// Checks the card's secrets against node.yaml's digests, before any is
/// used. `used`: this node has run its role step, so the secrets were
/// scrubbed from the card on purpose and none are expected.
pub fn check_secrets(paths: &Paths, cfg: &NodeConfig, used: bool) -> Result<(), String> {
    let dir = paths.card_secrets();
    let fix = format!("(fix: re-stamp the card with `{STAMP_HINT}`)");
    if !dir.exists() {
        if used || cfg.card.secrets.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "{}: node.yaml lists {} secret files, but the card holds none: a stamp was cut short, or the card was emptied {fix}",
            dir.display(),
            cfg.card.secrets.len()
        ));
    }
    let mut bad = Vec::new();
    for (rel, digest) in &cfg.card.secrets {
        match std::fs::read(paths.card_secret(rel)) {
            Ok(bytes) if secret_digest(&bytes) == *digest => {}
            Ok(_) => bad.push(format!("{rel} is not what was stamped")),
            Err(e) => bad.push(format!("{rel}: {e}")),
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}: the secrets do not match the digests in node.yaml ({}): a stamp was cut short, or the card is damaged {fix}",
        dir.display(),
        bad.join("; ")
    ))
}

/// Removes `secrets/` from the card so that nothing of them can be read
/// back from the raw partition, and checks it is gone. FAT only frees the
/// clusters of a deleted file, so each file is first overwritten in place
/// with zeros and synced (FAT writes a file's data where it was), then
/// unlinked. Returns whether there was anything to remove.
pub fn scrub_secrets(paths: &Paths) -> anyhow::Result<bool> {
    let dir = paths.card_secrets();
    if !dir.exists() {
        return Ok(false);
    }
    overwrite_files(&dir).with_context(|| format!("overwriting the secrets in {}", dir.display()))?;
    atomic::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    if dir.exists() {
        anyhow::bail!(
            "{} is still there after removing it (fix: check that {CONFIG_LABEL} is mounted read-write)",
            dir.display()
        );
    }
    log::info!("overwrote and removed {CARD_DIR}/ on the config partition");
    Ok(true)
}

/// Zeroes every regular file under `dir` in place, each synced.
fn overwrite_files(dir: &std::path::Path) -> io::Result<()> {
    use std::io::Write;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            overwrite_files(&entry.path())?;
        } else if kind.is_file() {
            let mut f = std::fs::OpenOptions::new().write(true).open(entry.path())?;
            let len = f.metadata()?.len();
            let zeros = vec![0u8; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
        }
    }
    Ok(())
}
