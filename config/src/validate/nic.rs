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
        } else if let Some(why) = not_a_nic_mac(m) {
            r.error(
                format!("{at}.mac"),
                format!("`{m}` is {why}, which no NIC has as its own"),
                "copy the NIC's address from `ip link` on the board, or from the sticker",
            );
        }
    }
}

/// 1..=15 bytes (Linux's IFNAMSIZ), not `.`/`..`, and only ASCII letters,
/// digits, '-', '_' and '.': every name the kernel and udev give a NIC, and
/// nothing that would need quoting in keepalived.conf, a networkd unit or netplan.
pub(crate) fn interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME {
        return Err(format!("it has {} characters; Linux allows 1 to {MAX_INTERFACE_NAME}", name.len()));
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are reserved".to_string());
    }
    if let Some(bad) = name.chars().find(|ch| !(ch.is_ascii_alphanumeric() || "-_.".contains(*ch))) {
        return Err(format!("it contains {bad:?}; piha allows letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// `xx:xx:xx:xx:xx:xx` with hex digits in either case.
pub(crate) fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why a well-formed MAC can be no NIC's own address: all zeros, or a
/// multicast (or broadcast) address, whose first octet's low bit is set.
pub(crate) fn not_a_nic_mac(text: &str) -> Option<&'static str> {
    let octets: Vec<u8> = text.split(':').filter_map(|p| u8::from_str_radix(p, 16).ok()).collect();
    if octets.iter().all(|&o| o == 0) {
        Some("the all-zero address")
    } else if octets.first().is_some_and(|o| o & 1 == 1) {
        Some("a multicast address (the first octet is odd)")
    } else {
        None
    }
}
