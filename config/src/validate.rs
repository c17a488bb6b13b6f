//! Validation of cluster files and node.yaml. Every problem is reported at once.
//! (Filled in by the validation work; the signatures are the contract.)

use std::path::Path;

use crate::cluster::ClusterFile;
use crate::node::NodeConfig;
use crate::problem::Problems;

/// The boards and distros that exist (names of files in `boards/`, `distros/`).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub boards: Vec<String>,
    pub distros: Vec<String>,
}

pub fn cluster(_file: &Path, _c: &ClusterFile, _catalog: &Catalog) -> Problems {
    Problems(Vec::new())
}

pub fn node_config(_file: &Path, _c: &NodeConfig) -> Problems {
    Problems(Vec::new())
}
