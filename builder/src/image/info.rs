//! `image.json`: what an image is, written by `piha build` onto the empty
//! PIHA-CFG partition (and into the root filesystem as /etc/piha/image.json).
//! `piha stamp` reads it back to refuse a node of another board, and keeps the
//! file byte for byte.

use std::fmt;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::arch::Arch;

/// Its name on PIHA-CFG.
pub const IMAGE_INFO_FILE: &str = "image.json";

/// What a build is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// What users flash: real Kubernetes packages.
    Production,
    /// Adds the test-only overlay (recording kubeadm, power-off when the agent is done).
    Test,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Production => "production",
            Profile::Test => "test",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one record of what an image is. `piha build` writes every field;
/// stamping reads `board` (to refuse another board's node) and `distro` (to
/// render node.yaml for it), and takes a file made by hand that lacks them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piha_version: Option<String>,
    /// The digest of every input of the build: equal digests, equal images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_hash: Option<String>,
}

impl ImageInfo {
    /// Parses the file as found on a card.
    pub fn parse(raw: &[u8]) -> anyhow::Result<ImageInfo> {
        serde_json::from_slice(raw)
            .with_context(|| format!("{IMAGE_INFO_FILE} on PIHA-CFG is not valid JSON; rebuild the image with `piha build`"))
    }

    /// The file's bytes, as `piha build` writes them.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{ImageInfo, Profile};
    use crate::arch::Arch;

    #[test]
    fn round_trips_and_accepts_a_hand_made_file() {
        let full = ImageInfo {
            board: Some("rpi4".into()),
            distro: Some("debian-bookworm".into()),
            arch: Some(Arch::Arm64),
            profile: Some(Profile::Test),
            piha_version: Some("0.1.0".into()),
            input_hash: Some("ab".into()),
        };
        assert_eq!(ImageInfo::parse(full.to_json().as_bytes()).unwrap(), full);
        assert!(full.to_json().contains("\"arch\": \"arm64\""));
        assert!(full.to_json().contains("\"profile\": \"test\""));
        let hand = ImageInfo::parse(br#"{"board": "amd64", "distro": "debian-bookworm", "piha": "0.1.0"}"#).unwrap();
        assert_eq!((hand.board.as_deref(), hand.arch), (Some("amd64"), None));
        assert_eq!(ImageInfo::parse(br#"{}"#).unwrap().board, None);
        assert!(ImageInfo::parse(br#"{"board": 7}"#).is_err());
    }
}
