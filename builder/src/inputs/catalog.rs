//! Where piha's data files live (boards/, distros/, overlays/) and which
//! boards and distros exist. Adding a board is adding a YAML file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use piha_config::validate::Catalog;

/// The data root: `$PIHA_DATA_DIR`, else the source checkout piha was built from.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("PIHA_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("builder/ has a parent")
            .to_path_buf(),
    }
}

fn yaml_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading {} (set PIHA_DATA_DIR to piha's data directory)", dir.display()))?
    {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The names of every board and distro file, and what each distro's
/// archive ships that validation needs (its containerd major version).
pub fn catalog() -> anyhow::Result<Catalog> {
    let root = data_dir();
    let distros = yaml_names(&root.join("distros"))?;
    let mut containerd_major = std::collections::BTreeMap::new();
    for name in &distros {
        let (distro, _, _) = crate::inputs::distro::load(name)?;
        if let Some(major) = distro.containerd_major {
            containerd_major.insert(name.clone(), major);
        }
    }
    Ok(Catalog {
        boards: yaml_names(&root.join("boards"))?,
        distros,
        containerd_major,
    })
}
