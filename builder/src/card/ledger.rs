//! `flash-ledger.json` beside the cluster file: which card became which node,
//! so an operator holding a stack of identical cards can tell them apart by
//! serial number, and knows which image each one got.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The ledger's file name.
pub const LEDGER_FILE: &str = "flash-ledger.json";

/// One flashed card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    pub node: String,
    /// Device path (or image file for `--to-file`) at the time of flashing.
    pub device: String,
    /// The card's serial number as the kernel reports it, if it has one.
    pub serial: Option<String>,
    pub model: Option<String>,
    pub image: String,
    /// sha256 of the decompressed image.
    pub image_sha256: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// The whole file: entries in the order the cards were flashed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub entries: Vec<LedgerEntry>,
}

/// Where the ledger of `cluster_file` lives.
pub fn ledger_path(cluster_file: &Path) -> PathBuf {
    match cluster_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(LEDGER_FILE),
        _ => PathBuf::from(LEDGER_FILE),
    }
}

impl Ledger {
    /// Reads the ledger, or an empty one if there is none yet.
    pub fn load(path: &Path) -> anyhow::Result<Ledger> {
        match std::fs::read(path) {
            Ok(raw) => serde_json::from_slice(&raw).with_context(|| {
                format!(
                    "{} is not a piha flash ledger (move it aside and flash again to start a new one)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Adds one entry and rewrites the file atomically (temp file, fsync,
    /// rename), so a crash never loses the cards recorded before.
    pub fn append(path: &Path, entry: LedgerEntry) -> anyhow::Result<()> {
        let mut ledger = Ledger::load(path)?;
        ledger.entries.push(entry);
        let mut text = serde_json::to_vec_pretty(&ledger)?;
        text.push(b'\n');
        piha_atomic::write(path, &text, None).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Ledger, LedgerEntry, ledger_path};

    #[test]
    fn appends_survive_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger_path(&dir.path().join("cluster.yaml"));
        assert_eq!(path, dir.path().join("flash-ledger.json"));
        let entry = |node: &str| LedgerEntry {
            node: node.to_string(),
            device: "/dev/sdb".into(),
            serial: Some("1234".into()),
            model: None,
            image: "out/lab-amd64.img.zst".into(),
            image_sha256: "ab".repeat(32),
            time: super::now_rfc3339(),
        };
        Ledger::append(&path, entry("cp1")).unwrap();
        Ledger::append(&path, entry("w1")).unwrap();
        let l = Ledger::load(&path).unwrap();
        assert_eq!(l.entries.iter().map(|e| e.node.as_str()).collect::<Vec<_>>(), ["cp1", "w1"]);
        assert_eq!(ledger_path(Path::new("cluster.yaml")), Path::new("flash-ledger.json"));
    }
}
