//! How a node's NIC is matched: by interface name or by MAC address.

use super::Report;

/// Linux's IFNAMSIZ is 16 including the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;

/// `interface` and `mac` are alternatives; each must be well-formed.
pub(super) fn check_nic_match(r: &mut Report, interface: Option<&str>, mac: Option<&str>, at: &str) {
    if interface.is_some() && mac.is_some() {
        r.error(
            format!("{at}.mac"),
            "interface and mac are both set; the NIC is matched by one of them",
            "keep either interface or mac",
        );
    }
    if let Some(name) = interface {
        if let Err(why) = interface_name(name) {
            r.error(
                format!("{at}.interface"),
                format!("`{name}` is not a Linux interface name: {why}"),
                "use the name the kernel gives the NIC, e.g. eth0, end0 or enp1s0, or match by mac instead",
            );
        }
    }
    if let Some(m) = mac {
        if !is_mac(m) {
            r.error(
                format!("{at}.mac"),
                format!("`{m}` is not a MAC address"),
                "write six hex pairs separated by ':', quoted, e.g. \"dc:a6:32:01:02:03\"",
            );
        }
    }
}

/// Linux's `dev_valid_name`: 1..=15 bytes, not `.`/`..`, no '/', ':' or whitespace.
pub(crate) fn interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME {
        return Err(format!("it has {} characters; Linux allows 1 to {MAX_INTERFACE_NAME}", name.len()));
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are reserved".to_string());
    }
    if let Some(bad) = name.chars().find(|ch| *ch == '/' || *ch == ':' || ch.is_whitespace()) {
        return Err(format!("it contains {bad:?}"));
    }
    Ok(())
}

/// `xx:xx:xx:xx:xx:xx` with hex digits in either case.
pub(crate) fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}
