//! The admin user's `~/.ssh/authorized_keys` (`piha`, uid 1000, created in the
//! image without a password). Written on every boot, so a re-stamped card with
//! other keys replaces them; an empty list leaves no key.

use crate::node::NodeConfig;

use super::header;

/// One key per line, after a header. Keys that span lines are cut at the first
/// line break: a key is one line, and a second line would be a second key.
pub(crate) fn authorized_keys(cfg: &NodeConfig) -> String {
    let mut text = header("#", cfg);
    for key in &cfg.ssh_authorized_keys {
        let line = key.lines().next().unwrap_or_default().trim();
        if !line.is_empty() {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use crate::node::NetworkRenderer;
    use crate::render::testing::node;

    use super::authorized_keys;

    #[test]
    fn one_key_per_line() {
        let mut cfg = node("w1", NetworkRenderer::Networkd);
        cfg.ssh_authorized_keys
            .push("ssh-ed25519 AAAA second\nssh-rsa injected".to_string());
        let text = authorized_keys(&cfg);
        let keys: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(keys.len(), 2, "{text}");
        assert!(keys[0].ends_with(" a@b"));
        assert_eq!(keys[1], "ssh-ed25519 AAAA second");
    }
}
