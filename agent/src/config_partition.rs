//! Reading the PIHA-CFG partition: `node.yaml` (validated with the shared
//! rules) and the `secrets/` a node needs until it has joined, and removing
//! those secrets once it has.

use std::io;

use anyhow::Context;
use piha_config::node::{CONFIG_LABEL, NodeConfig};
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
            "{}: the config partition is not there (fix: check that the card has a FAT partition labelled {CONFIG_LABEL} \
             and that boot-piha.mount mounted it; `journalctl -u boot-piha.mount` says why not)",
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

/// Removes `secrets/` from the card and checks it is gone. Returns whether
/// there was anything to remove.
pub fn scrub_secrets(paths: &Paths) -> anyhow::Result<bool> {
    let dir = paths.card_secrets();
    if !dir.exists() {
        return Ok(false);
    }
    atomic::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    if dir.exists() {
        anyhow::bail!(
            "{} is still there after removing it (fix: check that {CONFIG_LABEL} is mounted read-write)",
            dir.display()
        );
    }
    log::info!("removed {CARD_DIR}/ from the config partition");
    Ok(true)
}
