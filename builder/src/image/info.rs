//! `image.json`: what an image is, written by `piha build` onto the empty
//! PIHA-CFG partition (and into the root filesystem as /etc/piha/image.json).
//! `piha stamp` reads it back to refuse a node of another board, and keeps the
//! file byte for byte.

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::arch::Arch;

/// Its name on PIHA-CFG.
pub const IMAGE_INFO_FILE: &str = "image.json";

/// The one record of what an image is. `board` and `distro` are what stamping
/// needs; the rest is provenance, absent from files made by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub board: String,
    pub distro: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// `production` or `test`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piha_version: Option<String>,
    /// The digest of every input of the build: equal digests, equal images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_hash: Option<String>,
}

impl ImageInfo {
    /// Parses the file as found on a card.
    pub fn parse(raw: &[u8]) -> anyhow::Result<ImageInfo> {
        serde_json::from_slice(raw).with_context(|| {
            format!("{IMAGE_INFO_FILE} on PIHA-CFG is not what `piha build` writes (a JSON object with board and distro); rebuild the image with `piha build`")
        })
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
    use super::ImageInfo;
    use crate::arch::Arch;

    #[test]
    fn round_trips_and_accepts_a_hand_made_file() {
        let full = ImageInfo {
            board: "rpi4".into(),
            distro: "debian-bookworm".into(),
            arch: Some(Arch::Arm64),
            profile: Some("test".into()),
            piha_version: Some("0.1.0".into()),
            input_hash: Some("ab".into()),
        };
        assert_eq!(ImageInfo::parse(full.to_json().as_bytes()).unwrap(), full);
        assert!(full.to_json().contains("\"arch\": \"arm64\""));
        let hand = ImageInfo::parse(br#"{"board": "amd64", "distro": "debian-bookworm", "piha": "0.1.0"}"#).unwrap();
        assert_eq!((hand.board.as_str(), hand.arch), ("amd64", None));
        assert!(ImageInfo::parse(br#"{"distro": "x"}"#).is_err());
    }
}
