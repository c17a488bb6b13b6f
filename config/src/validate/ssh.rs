//! The SSH keys written to the admin user's authorized_keys.

use super::Report;

/// Every key must be an OpenSSH public key; none at all is only a warning.
pub(super) fn check_keys(r: &mut Report, keys: &[String]) {
    if keys.is_empty() {
        r.warning(
            "ssh_authorized_keys",
            "no SSH key: nobody can log in to the nodes (no password is ever set)",
            "add the line of your ~/.ssh/id_ed25519.pub",
        );
    }
    for (i, key) in keys.iter().enumerate() {
        let path = format!("ssh_authorized_keys[{i}]");
        if key.contains(['\n', '\r']) {
            r.error(
                path,
                "the entry holds more than one line; authorized_keys would get only part of it, or two keys",
                "write each key as its own list entry, on one line",
            );
        } else if key.contains("PRIVATE KEY") {
            r.error(
                path,
                "this is a PRIVATE key",
                "remove it at once and paste the public key (the .pub file) instead",
            );
        } else if let Err(e) = ssh_key::PublicKey::from_openssh(key) {
            r.error(
                path,
                format!("not an OpenSSH public key ({e})"),
                "paste one line of a .pub file, e.g. `ssh-ed25519 AAAAC3... you@laptop`, without authorized_keys options",
            );
        }
    }
}
