//! Time sync: a chrony sources file with the cluster's NTP servers.
//! Certificates need correct clocks, and a Pi has no RTC.
//!
//! The image must ship chrony; the agent runs `chronyc reload sources` after
//! writing the file (chrony also reads it at start).

use serde::Serialize;

use crate::node::NodeConfig;

use super::template::{self, CHRONY};
use super::{RenderError, check_word, header};

#[derive(Serialize)]
struct Data<'a> {
    header: String,
    servers: &'a [String],
}

/// `/etc/chrony/sources.d/piha.sources` (`server X iburst` per NTP entry), or
/// `None` when the cluster file names no NTP server (the distro's pool stays).
pub(crate) fn chrony_sources(cfg: &NodeConfig) -> Result<Option<String>, RenderError> {
    if cfg.node.ntp.is_empty() {
        return Ok(None);
    }
    for (i, server) in cfg.node.ntp.iter().enumerate() {
        check_word(&format!("node.ntp[{i}]"), server, "an NTP server name or address")?;
    }
    template::render(
        CHRONY,
        &Data {
            header: header("#", cfg),
            servers: &cfg.node.ntp,
        },
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use crate::node::NetworkRenderer;
    use crate::render::testing::node;

    use super::chrony_sources;

    #[test]
    fn one_server_line_per_ntp_entry() {
        let text = chrony_sources(&node("cp1", NetworkRenderer::Networkd))
            .expect("renders")
            .expect("ntp is set");
        let servers: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        assert_eq!(servers, ["server 10.1.0.1 iburst", "server time.example.org iburst"]);
    }

    #[test]
    fn no_file_without_ntp() {
        let mut cfg = node("cp1", NetworkRenderer::Networkd);
        cfg.node.ntp.clear();
        assert_eq!(chrony_sources(&cfg).expect("renders"), None);
    }

    #[test]
    fn a_server_with_spaces_is_refused() {
        let mut cfg = node("cp1", NetworkRenderer::Networkd);
        cfg.node.ntp = vec!["pool.ntp.org\nserver evil".to_string()];
        let err = chrony_sources(&cfg).expect_err("must not paste a second line").to_string();
        assert!(err.contains("node.ntp[0]"), "{err}");
    }
}
