//! The build cache: where it is, and whether a stage used what it held.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;

/// Whether a stage reused a cached result or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    Hit,
    Miss,
}

impl fmt::Display for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cache::Hit => "hit",
            Cache::Miss => "miss",
        })
    }
}

/// The cache directory: `--cache-dir`/`PIHA_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/piha`, else `~/.cache/piha`.
pub fn cache_dir(opt: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = opt {
        return Ok(p.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("piha"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache/piha")),
        None => bail!("no cache directory: set --cache-dir, PIHA_CACHE_DIR or HOME"),
    }
}
