//! Every schema error of a cluster file at once. yaml_serde stops at the
//! first error, so a file it refuses is read again one section and one node
//! at a time; inside each, a field that fails is reported and taken out, and
//! the rest is read again, until it parses or nothing more can be taken out.

use std::path::Path;

use serde::de::DeserializeOwned;
use yaml_serde::{Mapping, Value};

use crate::cluster::{Api, Kubernetes, Network, Node, yaml_error_fix, yaml_error_message};
use crate::problem::Problem;

/// The cluster file's sections, in the order `ClusterFile` declares them.
pub(crate) const SECTIONS: [&str; 7] = ["name", "distro", "kubernetes", "api", "network", "ssh_authorized_keys", "nodes"];
/// The sections without a default.
const REQUIRED: [&str; 5] = ["name", "kubernetes", "api", "network", "nodes"];

/// Every schema problem of `text` (which yaml_serde refused), in file order.
pub(crate) fn problems(file: &Path, text: &str) -> Vec<Problem> {
    let value: Value = match yaml_serde::from_str(text) {
        Ok(v) => v,
        Err(e) => return vec![problem(file, "", &e, true)],
    };
    let Value::Mapping(map) = value else {
        return vec![Problem::error(
            file,
            "",
            "the file is not a mapping of sections (name:, kubernetes:, api:, network:, nodes:)",
            "start from `piha init`'s example",
        )];
    };
    let mut out = Vec::new();
    for (key, v) in &map {
        match key.as_str() {
            Some("name" | "distro") => section::<String>(file, key.as_str().unwrap_or_default(), v, &mut out),
            Some("kubernetes") => section::<Kubernetes>(file, "kubernetes", v, &mut out),
            Some("api") => section::<Api>(file, "api", v, &mut out),
            Some("network") => section::<Network>(file, "network", v, &mut out),
            Some("ssh_authorized_keys") => section::<Vec<String>>(file, "ssh_authorized_keys", v, &mut out),
            Some("nodes") => match v {
                Value::Sequence(nodes) => {
                    for (i, n) in nodes.iter().enumerate() {
                        section::<Node>(file, &format!("nodes[{i}]"), n, &mut out);
                    }
                }
                other => section::<Vec<Node>>(file, "nodes", other, &mut out),
            },
            _ => out.push(Problem::error(
                file,
                "",
                format!("unknown field `{}`, expected one of {}", key_text(key), quoted(&SECTIONS)),
                "remove or correct the field; see the README's cluster file reference",
            )),
        }
    }
    for name in REQUIRED {
        if !map.contains_key(name) {
            out.push(Problem::error(
                file,
                "",
                format!("missing field `{name}`"),
                "add the missing field; `piha init` writes a complete example",
            ));
        }
    }
    out
}

/// Reads `value` as `T`, reporting each failing field under `at` and reading
/// again without it.
fn section<T: DeserializeOwned>(file: &Path, at: &str, value: &Value, out: &mut Vec<Problem>) {
    let mut value = value.clone();
    let mut taken_out: Vec<String> = Vec::new();
    // Each round takes one key out, so a section has at most as many rounds as keys.
    let rounds = value.as_mapping().map_or(0, Mapping::len) + 1;
    for _ in 0..rounds {
        // Re-serialized, so that yaml_serde names the failing field's path.
        let text = yaml_serde::to_string(&value).unwrap_or_default();
        let Err(e) = yaml_serde::from_str::<T>(&text) else { return };
        let (path, message) = yaml_error_message(&e);
        if let Some(field) = backticked(&message, "missing field `") {
            if taken_out.iter().any(|t| t == field) {
                return; // reported already, as the error that took it out
            }
        }
        out.push(problem(file, at, &e, false));
        let culprit = backticked(&message, "unknown field `")
            .map(str::to_string)
            .or_else(|| path.split(['.', '[']).next().filter(|k| !k.is_empty()).map(str::to_string));
        let Some(culprit) = culprit else { return };
        let Some(map) = value.as_mapping_mut() else { return };
        if map.remove(culprit.as_str()).is_none() {
            return;
        }
        taken_out.push(culprit);
    }
}

/// One problem from a yaml_serde error, its path under `at`. A line number
/// is kept only when `text` was the file itself, not a section re-serialized.
fn problem(file: &Path, at: &str, e: &yaml_serde::Error, located: bool) -> Problem {
    let (path, mut message) = yaml_error_message(e);
    if !located {
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
    }
    let path = match (at, path.as_str()) {
        (at, "") => at.to_string(),
        ("", p) => p.to_string(),
        (at, p) if p.starts_with('[') => format!("{at}{p}"),
        (at, p) => format!("{at}.{p}"),
    };
    Problem::error(file, path, message, yaml_error_fix(e))
}

/// The text between `prefix` and the next backtick in `message`.
fn backticked<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    rest.split('`').next()
}

fn key_text(key: &Value) -> String {
    key.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| yaml_serde::to_string(key).unwrap_or_default().trim().to_string())
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::SECTIONS;
    use crate::cluster::ClusterFile;

    /// SECTIONS is the one list this module keeps of ClusterFile's fields:
    /// yaml_serde's own message for an unknown field names them all.
    #[test]
    fn the_sections_are_the_cluster_files_fields() {
        let err = yaml_serde::from_str::<ClusterFile>("bogus: 1\n")
            .expect_err("unknown field")
            .to_string();
        for s in SECTIONS {
            assert!(err.contains(&format!("`{s}`")), "{s} not in {err}");
        }
        assert_eq!(err.matches('`').count(), 2 * (SECTIONS.len() + 1), "{err}");
    }

    #[test]
    fn schema_errors_in_several_sections_and_nodes_are_all_reported() {
        let text = "\
name: [x]
kubernetes:
  version: \"1.34\"
  runtime: docker
  pod_subnet: 10.244.0.0/16
api:
  vip: 192.168.50.300
  port: 6443
  colour: blue
network:
  prefix: 24
  gateway: 192.168.50.1
nodes:
  - name: cp1
    board: amd64
    role: master
    ip: 192.168.50.11
  - name: w1
    board: amd64
    role: worker
    ipaddr: 192.168.50.21
  - name: w2
    board: amd64
    role: worker
    ip: 192.168.50.22
    mac: [1]
extra: 1
";
        let problems = ClusterFile::parse(Path::new("c.yaml"), text).expect_err("bad").0;
        let got: Vec<(String, String)> = problems.iter().map(|p| (p.path.clone(), p.message.clone())).collect();
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "name",
                "kubernetes.version",
                "kubernetes.runtime",
                "api.vip",
                "api",
                "nodes[0].role",
                "nodes[1]",
                "nodes[1]",
                "nodes[2].mac",
                ""
            ],
            "{got:#?}"
        );
        assert!(got[4].1.starts_with("unknown field `colour`"), "{got:#?}");
        assert!(got[6].1.starts_with("unknown field `ipaddr`"), "{got:#?}");
        assert_eq!(got[7].1, "missing field `ip`", "{got:#?}");
        assert!(got[9].1.starts_with("unknown field `extra`"), "{got:#?}");
        // A field taken out is not reported again as missing.
        assert!(
            !got.iter()
                .any(|(_, m)| m.contains("missing field `role`") || m.contains("missing field `vip`")),
            "{got:#?}"
        );
    }
}
