//! Validation of cluster files (builder side) and node.yaml (agent side).
//!
//! Both return every problem at once, errors first, each naming the file, the
//! field path (`nodes[3].ip`), what is wrong and how to fix it. Parsing (types,
//! unknown fields, enum values, the syntax of the Kubernetes version) happens
//! before, in `ClusterFile::parse` and `NodeConfig::parse`; these modules check
//! what the types cannot, one module per subject: names, network addresses and
//! subnets, NICs, nodes and roles, the API endpoint, Kubernetes, SSH keys.

mod api;
mod kubernetes;
mod names;
mod network;
mod nic;
mod node_config;
mod nodes;
mod ssh;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::path::{Path, PathBuf};

use crate::cluster::ClusterFile;
use crate::problem::{Problem, Problems};

pub(crate) use node_config::node_config;

/// The boards and distros that exist (names of files in `boards/`, `distros/`).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub boards: Vec<String>,
    pub distros: Vec<String>,
    /// The containerd major version each distro's archive ships, where its
    /// file says (`containerd_major:`).
    pub containerd_major: std::collections::BTreeMap<String, u32>,
}

/// Collects problems for one file.
struct Report {
    file: PathBuf,
    problems: Vec<Problem>,
}

impl Report {
    fn new(file: &Path) -> Report {
        Report {
            file: file.to_path_buf(),
            problems: Vec::new(),
        }
    }

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem::error(&self.file, path, message, fix));
    }

    fn warning(&mut self, path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem::warning(&self.file, path, message, fix));
    }

    /// Errors first, each group in the order found (file order).
    fn finish(mut self) -> Problems {
        self.problems.sort_by_key(|p| !p.is_error());
        Problems(self.problems)
    }
}

/// Checks a parsed cluster file against every rule piha knows. The checks
/// run in the order of the file's sections, so problems come out in file order.
pub fn cluster(file: &Path, c: &ClusterFile, catalog: &Catalog) -> Problems {
    let mut r = Report::new(file);
    names::check_cluster_name(&mut r, "name", &c.name);
    check_distro(&mut r, &c.distro, catalog);
    kubernetes::check_cluster(&mut r, c);
    kubernetes::check_containerd(&mut r, c, catalog);
    api::check_numbers(&mut r, "api.port", c.api.port, "api.vrrp_router_id", c.api.vrrp_router_id);
    ssh::check_keys(&mut r, &c.ssh_authorized_keys);
    network::check_cluster(&mut r, c);
    api::check_cluster_vip(&mut r, c);
    nodes::check(&mut r, c, catalog);
    api::check_mode(&mut r, c);
    r.finish()
}

fn check_distro(r: &mut Report, distro: &str, catalog: &Catalog) {
    if !catalog.distros.iter().any(|d| d == distro) {
        r.error(
            "distro",
            format!("unknown distro `{distro}`; piha knows: {}", list(&catalog.distros)),
            format!("use one of them, or add distros/{distro}.yaml"),
        );
    }
}

/// The index of the first entry that had `key`, if an earlier one did;
/// otherwise records `key` as entry `i`'s.
fn first_seen<K: Hash + Eq>(seen: &mut HashMap<K, usize>, key: K, i: usize) -> Option<usize> {
    match seen.entry(key) {
        Entry::Occupied(e) => Some(*e.get()),
        Entry::Vacant(e) => {
            e.insert(i);
            None
        }
    }
}

/// The names in a catalog list, for a message.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none: is PIHA_DATA_DIR right?)".to_string()
    } else {
        names.join(", ")
    }
}
