//! The files a command reads: the cluster file, the board and distro files.
//! One loader for every command.

pub mod board;
pub mod catalog;
pub mod cluster;
pub mod distro;

use std::path::Path;

/// Parses a board or distro file as `T` through the gate every YAML input
/// passes (`piha_config::yaml`); the error names the file and `fix`.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(file: &Path, text: &str, fix: &str) -> anyhow::Result<T> {
    piha_config::yaml::from_str(file, text, fix).map_err(|p| anyhow::anyhow!("{}", p.0[0]))
}
