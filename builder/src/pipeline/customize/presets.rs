//! Enabling units from the overlays' preset files, by creating the symlinks
//! `systemctl enable` would (see [`super::units`]).

use std::collections::BTreeSet;
use std::fs::File;

use anyhow::bail;

use super::tree::{Kind, Node, Tree, canonical, glob_match, insert, read_node, resolve};
use super::units::{self, Preset};

/// Finds a unit file the way systemd searches (/etc before /usr/lib): the
/// path it was found at (the symlinks' target) and the file's node.
fn find_unit<'a>(tree: &'a Tree, file: &str) -> Option<(String, &'a Node)> {
    for dir in ["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"] {
        let declared = canonical(tree, &format!("{dir}/{file}"));
        if !tree.contains_key(&declared) {
            continue;
        }
        if let Some((_, node)) = resolve(tree, &declared).filter(|(_, n)| matches!(n.kind, Kind::File(_))) {
            return Some((declared, node));
        }
    }
    None
}

/// Applies the overlays' preset files; returns the symlinks created.
pub(super) fn apply_presets(tree: &mut Tree, source: &File) -> anyhow::Result<Vec<String>> {
    let preset_files: Vec<String> = tree
        .iter()
        .filter(|(p, n)| {
            !n.from_rootfs
                && matches!(n.kind, Kind::File(_))
                && (glob_match("usr/lib/systemd/system-preset/*.preset", p) || glob_match("etc/systemd/system-preset/*.preset", p))
        })
        .map(|(p, _)| p.clone())
        .collect();
    let mut sorted = preset_files;
    sorted.sort_by(|a, b| a.rsplit('/').next().cmp(&b.rsplit('/').next()));
    let mut created = Vec::new();
    for file in sorted {
        let text = String::from_utf8_lossy(&read_node(source, &tree[&file])?).into_owned();
        let presets = units::parse_preset(&text).map_err(|e| anyhow::anyhow!("/{file}: {e}"))?;
        for preset in presets {
            match preset {
                Preset::Enable(unit) => {
                    let mut walk = Enabling {
                        preset: &file,
                        seen: BTreeSet::new(),
                        created: &mut created,
                    };
                    enable(tree, source, &unit, &mut walk)?;
                }
                Preset::Disable(unit) => disable(tree, source, &unit)?,
            }
        }
    }
    created.sort();
    created.dedup();
    Ok(created)
}

/// One `enable` line of a preset file, followed through `Also=`.
struct Enabling<'a> {
    /// The preset file, for messages.
    preset: &'a str,
    /// Units already enabled on this walk.
    seen: BTreeSet<String>,
    /// Every link made, across the whole preset run.
    created: &'a mut Vec<String>,
}

fn enable(tree: &mut Tree, source: &File, unit: &str, walk: &mut Enabling<'_>) -> anyhow::Result<()> {
    if !walk.seen.insert(unit.to_string()) {
        return Ok(());
    }
    let (template, _) = units::template_of(unit);
    let Some((unit_path, node)) = find_unit(tree, &template) else {
        // `Also=` may name units this image does not have; systemctl skips them too.
        if walk.seen.len() > 1 {
            return Ok(());
        }
        let preset = walk.preset;
        bail!(
            "/{preset}: enable {unit}: no unit file {template} in etc/systemd/system or usr/lib/systemd/system (fix: add it to an overlay or install its package)"
        );
    };
    let install = units::parse_install(&String::from_utf8_lossy(&read_node(source, node)?));
    for link in units::enable_links(unit, &format!("/{unit_path}"), &install) {
        insert(tree, link.path.clone(), Node::new(Kind::Symlink(link.target.into_bytes()), 0o777));
        walk.created.push(link.path);
    }
    for also in &install.also {
        enable(tree, source, also, walk)?;
    }
    Ok(())
}

fn disable(tree: &mut Tree, source: &File, unit: &str) -> anyhow::Result<()> {
    let (template, _) = units::template_of(unit);
    let aliases = match find_unit(tree, &template) {
        Some((_, node)) => units::parse_install(&String::from_utf8_lossy(&read_node(source, node)?)).alias,
        None => Vec::new(),
    };
    tree.retain(|path, node| {
        let is_link = matches!(node.kind, Kind::Symlink(_));
        let wants = glob_match(&format!("etc/systemd/system/*.wants/{unit}"), path)
            || glob_match(&format!("etc/systemd/system/*.requires/{unit}"), path)
            || aliases.iter().any(|a| *path == format!("etc/systemd/system/{a}"));
        !(is_link && wants)
    });
    Ok(())
}
