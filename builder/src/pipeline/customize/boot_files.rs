//! Collecting the boot partition's files (kernel, initrd, bootloader, DTBs,
//! firmware) from the root filesystem by the board's rules.

use std::collections::BTreeMap;
use std::fs::File;

use anyhow::{Context, bail};

use super::tree::{Kind, Tree, glob_match, read_node, resolve};
use crate::image::fat::FatFile;
use crate::inputs::board::BootFile;

/// Compares with digit runs as numbers, so `vmlinuz-6.1.0-10` > `vmlinuz-6.1.0-9`.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let na = std::str::from_utf8(&a[..da]).ok().and_then(|s| s.parse::<u128>().ok()).unwrap_or(0);
                let nb = std::str::from_utf8(&b[..db]).ok().and_then(|s| s.parse::<u128>().ok()).unwrap_or(0);
                match na.cmp(&nb) {
                    std::cmp::Ordering::Equal => {
                        a = &a[da..];
                        b = &b[db..];
                    }
                    o => return o,
                }
            }
            (Some(x), Some(y)) => match x.cmp(y) {
                std::cmp::Ordering::Equal => {
                    a = &a[1..];
                    b = &b[1..];
                }
                o => return o,
            },
        }
    }
}

pub(super) fn collect_boot_files(tree: &Tree, source: &File, rules: &[BootFile]) -> anyhow::Result<Vec<FatFile>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for rule in rules {
        let matches: Vec<&String> = tree.keys().filter(|p| glob_match(&rule.from, p)).collect();
        if matches.is_empty() {
            if rule.optional {
                continue;
            }
            bail!(
                "boot file rule from {:?} to {:?} matches nothing in the root filesystem (is the kernel or bootloader package in the board's package list?)",
                rule.from,
                rule.to
            );
        }
        let to_dir = rule.to.ends_with('/');
        if to_dir {
            let prefix = rule.to.trim_matches('/');
            for m in matches {
                let base = m.rsplit('/').next().unwrap_or(m);
                add_boot_path(tree, source, m, &join(prefix, base), &mut out)?;
            }
        } else {
            let best = matches.iter().max_by(|a, b| version_cmp(a, b)).expect("not empty");
            add_boot_path(tree, source, best, rule.to.trim_start_matches('/'), &mut out)?;
        }
    }
    Ok(out.into_iter().map(|(path, contents)| FatFile { path, contents }).collect())
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Adds one file, or a directory's files recursively, to the boot files.
fn add_boot_path(tree: &Tree, source: &File, from: &str, to: &str, out: &mut BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
    let Some((real, node)) = resolve(tree, from) else {
        bail!("boot file {from}: a dangling link in the root filesystem");
    };
    if matches!(node.kind, Kind::Dir) {
        let prefix = format!("{real}/");
        for (p, n) in tree.range(prefix.clone()..) {
            if !p.starts_with(&prefix) {
                break;
            }
            if matches!(n.kind, Kind::File(_) | Kind::Symlink(_) | Kind::HardLink(_)) {
                if let Some((_, file)) = resolve(tree, p).filter(|(_, f)| matches!(f.kind, Kind::File(_))) {
                    out.insert(format!("{to}/{}", &p[prefix.len()..]), read_node(source, file)?);
                }
            }
        }
        return Ok(());
    }
    out.insert(
        to.to_string(),
        read_node(source, node).with_context(|| format!("boot file {from}"))?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::version_cmp;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(version_cmp("vmlinuz-6.1.0-10-amd64", "vmlinuz-6.1.0-9-amd64"), Ordering::Greater);
        assert_eq!(version_cmp("a-1", "a-1"), Ordering::Equal);
    }
}
