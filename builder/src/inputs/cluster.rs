//! The one entry point every command uses to load a cluster file: nothing is
//! written anywhere unless the file is valid.

use std::path::Path;

use piha_config::cluster::ClusterFile;
use piha_config::problem::Problems;
use piha_config::validate::Catalog;

use crate::inputs::catalog;

/// Loads and validates a cluster file. Warnings go to stderr; any error fails
/// with every problem listed, before any work starts.
pub fn load_cluster(path: &Path) -> anyhow::Result<ClusterFile> {
    let (cluster, problems) = check(path)?;
    for w in problems.0.iter().filter(|p| !p.is_error()) {
        eprintln!("{w}");
    }
    match cluster {
        Some(c) if !problems.has_errors() => Ok(c),
        _ => Err(anyhow::anyhow!("{} is not valid; nothing was written:\n{problems}", path.display())),
    }
}

/// Parses and validates; returns the parsed file (if it parsed) and every problem.
pub fn check(path: &Path) -> anyhow::Result<(Option<ClusterFile>, Problems)> {
    let catalog = catalog::catalog()?;
    Ok(checked(path, ClusterFile::load(path), &catalog))
}

/// Like `load_cluster`, for a file's text that is not on disk yet (the example
/// `piha init` is about to write), reported as if it were at `path`.
pub fn load_cluster_text(path: &Path, text: &str) -> anyhow::Result<ClusterFile> {
    let catalog = catalog::catalog()?;
    match checked(path, ClusterFile::parse(path, text), &catalog) {
        (Some(c), problems) if !problems.has_errors() => Ok(c),
        (_, problems) => Err(anyhow::anyhow!(
            "{} would not be valid; nothing was written:\n{problems}",
            path.display()
        )),
    }
}

fn checked(path: &Path, parsed: Result<ClusterFile, Problems>, catalog: &Catalog) -> (Option<ClusterFile>, Problems) {
    match parsed {
        Ok(c) => {
            let problems = piha_config::validate::cluster(path, &c, catalog);
            (Some(c), problems)
        }
        Err(problems) => (None, problems),
    }
}
