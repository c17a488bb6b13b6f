//! read-config: parse and validate `node.yaml` with the shared schema, and
//! note the versions of what the image ships. An invalid file stops the
//! agent before anything on the node is touched (`agent::run`).

use piha_config::cluster::Role;
use piha_config::node::NodeConfig;
use piha_runner::Cmd;

use super::Env;
use crate::config_partition;

/// The validated node config, or the full problem report.
pub fn run(env: &Env) -> Result<NodeConfig, String> {
    config_partition::read_node(env.paths)
}

/// `(what, version)` for the tools this node's role uses; "unavailable: ..."
/// when a tool cannot report one (which the role step will then hit too).
pub fn versions(env: &Env, cfg: &NodeConfig) -> Vec<(String, String)> {
    let mut probes = Vec::new();
    match cfg.node.role {
        Role::ControlPlane | Role::Worker => {
            probes.push(("kubeadm", Cmd::new("kubeadm").args(["version", "-o", "short"])));
            let runtime = cfg.cluster.runtime.as_str();
            probes.push((runtime, Cmd::new(runtime).arg("--version")));
        }
        // keepalived prints its version on stderr.
        Role::Director => probes.push(("keepalived", Cmd::new("keepalived").arg("--version"))),
    }
    probes
        .into_iter()
        .map(|(what, cmd)| {
            let version = match env.runner.run(&cmd) {
                Ok(out) => {
                    let text = if out.stdout.is_empty() { &out.stderr } else { &out.stdout };
                    let first = String::from_utf8_lossy(text).lines().next().unwrap_or_default().trim().to_string();
                    if first.is_empty() { "unknown".to_string() } else { first }
                }
                Err(e) => format!("unavailable: {e}"),
            };
            (what.to_string(), version)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use piha_config::status::{Outcome, Phase};

    use crate::agent::Ending;
    use crate::testing::Scratch;

    /// Every file under `dir`, relative.
    fn tree(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
        out.sort();
        out
    }

    fn assert_invalid(s: &Scratch, root_before: &[String], expect: &[&str]) {
        assert_eq!(s.run(), Ending::InvalidConfig);
        let status = s.status();
        assert_eq!(status.phase, Phase::InvalidConfig);
        let error = status.error.clone().unwrap();
        for e in expect {
            assert!(error.contains(e), "{e:?} not in {error}");
        }
        assert_eq!(status.steps.len(), 1);
        assert_eq!(
            (status.steps[0].name.as_str(), status.steps[0].outcome),
            ("read-config", Outcome::Failed)
        );
        assert_eq!(tree(&s.paths.root), root_before, "nothing may change on the node");
        assert!(!s.paths.card_secrets().exists(), "a refused card keeps no secrets");
        assert_eq!(s.commands(), Vec::<String>::new(), "no command may run");
    }

    /// Replaces `old` with `new` in node.yaml and seals it again: a card a
    /// careless stamper wrote wrong, not a torn one.
    fn edit_node_yaml(s: &Scratch, old: &str, new: &str) {
        let text = std::fs::read_to_string(s.paths.node_file()).unwrap();
        let body = piha_config::node::unsealed(&text).replace(old, new);
        std::fs::write(s.paths.node_file(), piha_config::node::seal(&body)).unwrap();
    }

    #[test]
    fn a_torn_node_yaml_changes_nothing() {
        let s = Scratch::new("cp1");
        let before = tree(&s.paths.root);
        let text = std::fs::read_to_string(s.paths.node_file()).unwrap();
        std::fs::write(s.paths.node_file(), &text[..text.len() / 2]).unwrap();
        assert_invalid(&s, &before, &["node.yaml", "checksum line", "re-stamp"]);
    }

    /// A secret that is not what node.yaml's digest says (a stamp cut short
    /// after node.yaml, before the key): invalid, never copied to the node.
    #[test]
    fn a_secret_that_does_not_match_its_digest_is_invalid_config() {
        let s = Scratch::new("cp1");
        let before = tree(&s.paths.root);
        std::fs::write(s.paths.card_secret("pki/ca.key"), vec![0u8; 227]).unwrap();
        assert_invalid(&s, &before, &["pki/ca.key is not what was stamped", "re-stamp"]);
    }

    #[test]
    fn missing_secrets_on_a_node_that_has_not_joined_are_invalid_config() {
        let s = Scratch::new("w1");
        let before = tree(&s.paths.root);
        std::fs::remove_dir_all(s.paths.card_secrets()).unwrap();
        assert_invalid(&s, &before, &["lists 2 secret files, but the card holds none", "re-stamp"]);
    }

    #[test]
    fn an_invalid_node_yaml_changes_nothing() {
        let s = Scratch::new("cp1");
        let before = tree(&s.paths.root);
        edit_node_yaml(&s, "address: 10.0.2.11/24", "address: 10.0.2.311/24");
        assert_invalid(&s, &before, &["node.yaml", "node.address", "fix:"]);
    }

    #[test]
    fn an_unknown_field_is_reported_with_its_name() {
        let s = Scratch::new("w1");
        let before = tree(&s.paths.root);
        edit_node_yaml(&s, "  gateway:", "  gatway:");
        assert_invalid(&s, &before, &["node.yaml", "gatway"]);
    }

    #[test]
    fn a_missing_node_yaml_says_how_to_stamp() {
        let s = Scratch::new("w1");
        let before = tree(&s.paths.root);
        std::fs::remove_file(s.paths.node_file()).unwrap();
        assert_invalid(&s, &before, &["node.yaml: not found", "piha stamp"]);
    }
}
