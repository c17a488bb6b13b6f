//! What names a build: the input hash over everything an image is made
//! from, and `image.json`, the identity `piha stamp` checks a card against.

use std::path::Path;

use anyhow::Context;
use piha_config::cluster::ClusterFile;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::image::info::ImageInfo;
use crate::inputs::board::Board;
use crate::pipeline::plan::{Plan, Profile};

/// Bumped when stage 2 changes what it makes from the same inputs.
pub const CUSTOMIZE_RECIPE_VERSION: u32 = 1;

/// `image.json` for the image this plan makes.
pub fn image_info(plan: &Plan, input_hash: &str) -> ImageInfo {
    ImageInfo {
        board: Some(plan.req.board.name.clone()),
        distro: Some(plan.req.distro.name.clone()),
        arch: Some(plan.arch),
        profile: Some(plan.req.profile),
        piha_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        input_hash: Some(input_hash.to_string()),
    }
}

/// The hash of everything the image is made from: the rootfs key (distro,
/// packages, mirrors, board), the agent, every overlay and template, the
/// cluster (SSH keys, runtime), profile, piha's version and the epoch.
pub fn input_hash(plan: &Plan, rootfs_key: &str, agent_sha256: &str, epoch: u64) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Inputs<'a> {
        recipe: u32,
        piha: &'a str,
        rootfs: &'a str,
        agent: &'a str,
        board: &'a Board,
        overlays: Vec<(String, String)>,
        templates: String,
        cluster: &'a ClusterFile,
        profile: Profile,
        epoch: u64,
    }
    let overlays = plan
        .overlays
        .iter()
        .map(|o| {
            Ok((
                o.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                tree_digest(o)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let inputs = Inputs {
        recipe: CUSTOMIZE_RECIPE_VERSION,
        piha: env!("CARGO_PKG_VERSION"),
        rootfs: rootfs_key,
        agent: agent_sha256,
        board: &plan.req.board,
        overlays,
        templates: tree_digest(&plan.templates)?,
        cluster: &plan.req.cluster,
        profile: plan.req.profile,
        epoch,
    };
    Ok(sha256_hex(serde_json::to_string(&inputs)?.as_bytes()))
}

/// sha256 of some bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A digest of a directory tree: every path, type, executable bit and content.
pub fn tree_digest(dir: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    if !dir.exists() {
        h.update(b"absent");
        return Ok(hex::encode(h.finalize()));
    }
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e.with_context(|| format!("reading {}", d.display()))?.path();
            let meta = std::fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
            if meta.is_dir() {
                stack.push(p.clone());
            }
            files.push((p, meta));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, meta) in files {
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        if meta.file_type().is_symlink() {
            h.update(b"l");
            h.update(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            h.update(if meta.mode() & 0o111 != 0 { b"x" } else { b"f" });
            h.update(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
        } else {
            h.update(b"d");
        }
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}
