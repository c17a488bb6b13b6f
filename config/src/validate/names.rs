//! Names: the cluster's and the nodes' (RFC 1123 labels) and DNS domains.

use super::Report;
use crate::render::hosts::api_name;

/// An RFC 1123 label: what hostnames, kubeadm node names and image names need.
pub(crate) fn rfc1123_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("is {} characters long; it must have 1 to 63", name.len()));
    }
    if let Some(bad) = name
        .chars()
        .find(|ch| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || *ch == '-'))
    {
        return Err(format!("contains `{bad}`; only lowercase letters, digits and '-' are allowed"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("starts or ends with '-'".to_string());
    }
    Ok(())
}

/// `what` (e.g. "node name") `name` at `path` must be an RFC 1123 label.
pub(super) fn check_name(r: &mut Report, path: &str, name: &str, what: &str) {
    if let Err(why) = rfc1123_label(name) {
        r.error(
            path,
            format!("{what} `{name}` is not an RFC 1123 label: it {why}"),
            "use lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit (e.g. cp1)",
        );
    }
}

/// The cluster's name, and the name its VIP gets in /etc/hosts
/// (`<cluster>-api`), which must be an RFC 1123 label as well.
pub(super) fn check_cluster_name(r: &mut Report, path: &str, name: &str) {
    check_name(r, path, name, "cluster name");
    let alias = api_name(name);
    if rfc1123_label(name).is_ok() && alias.len() > 63 {
        r.error(
            path,
            format!(
                "the VIP's name `{alias}` would be {} characters long; a host name label has at most 63",
                alias.len()
            ),
            format!("use a cluster name of at most {} characters", 63 - (alias.len() - name.len())),
        );
    }
}

/// A DNS domain: at most 253 characters of RFC 1123 labels, a final dot allowed.
pub(super) fn check_domain(r: &mut Report, path: &str, domain: &str) {
    let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
    if domain.len() > 253 || labels.iter().any(|l| rfc1123_label(l).is_err()) {
        r.error(
            path,
            format!("`{domain}` is not a DNS domain name"),
            "write lowercase labels separated by dots, e.g. lab.example.org",
        );
    }
}
