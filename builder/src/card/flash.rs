//! Flashing a whole card: the image through the device stack, the node's
//! identity stamped onto the same open target before the image's first MiB
//! (its partition table) goes on, so a card looks bootable only once it is
//! complete; then a line in the ledger.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::card::ledger::{Ledger, LedgerEntry, ledger_path, now_rfc3339};
use crate::card::stamp::{self, Identity, Stamped};
use crate::device::safety::DeviceInfo;
use crate::device::source::{Compression, ImageSource};
use crate::device::target::WriteTarget;
use crate::device::write::{Finish, Verify, WriteReport, write_image_before_head};
use crate::progress::Progress;

/// What one flash did: the summary printed, and `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlashSummary {
    pub node: String,
    pub target: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub image: String,
    pub compression: Compression,
    pub bmap: Option<String>,
    #[serde(flatten)]
    pub report: WriteReport,
    pub stamped: bool,
    pub seconds: f64,
}

/// A card written and stamped.
pub struct Flashed {
    pub report: WriteReport,
    pub stamped: Stamped,
    pub seconds: f64,
}

/// Writes the image onto `target` and stamps `id`'s node onto it.
pub fn write_card(
    id: Identity<'_>,
    source: &ImageSource,
    target: &mut dyn WriteTarget,
    progress: &Progress,
    verify: Verify,
) -> anyhow::Result<Flashed> {
    let started = Instant::now();
    let mut stamped = None;
    let mut stamp_it = |target: &mut dyn WriteTarget, head: &[u8]| {
        let s = stamp::onto_with_head(id, target, head).with_context(|| {
            format!(
                "the image is on {}, but stamping node {} failed, so its partition table was not written and the card is blank: fix the cause and flash again",
                target.describe(),
                id.node
            )
        })?;
        stamped = Some(s);
        Ok(())
    };
    let finish = Finish {
        verify,
        before_head: &mut stamp_it,
    };
    let report = write_image_before_head(source.stream()?, &source.bmap, target, progress, finish)?;
    let stamped = stamped.context("the flash finished without stamping")?;
    Ok(Flashed {
        report,
        stamped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The summary of a finished flash.
pub fn summarize(target: &Path, info: Option<&DeviceInfo>, source: &ImageSource, flashed: Flashed) -> FlashSummary {
    FlashSummary {
        node: flashed.stamped.card.node.node.name.clone(),
        target: target.display().to_string(),
        model: info.and_then(|i| i.model.clone()),
        serial: info.and_then(|i| i.serial.clone()),
        image: source.path.display().to_string(),
        compression: source.compression,
        bmap: source.bmap_path.as_ref().map(|p| p.display().to_string()),
        report: flashed.report,
        stamped: true,
        seconds: flashed.seconds,
    }
}

/// Appends the card to the ledger beside the cluster file.
pub fn record(cluster_file: &Path, s: &FlashSummary) -> anyhow::Result<()> {
    let path = ledger_path(cluster_file);
    let entry = LedgerEntry {
        node: s.node.clone(),
        device: s.target.clone(),
        serial: s.serial.clone(),
        model: s.model.clone(),
        image: s.image.clone(),
        image_sha256: s.report.image_sha256.clone(),
        time: now_rfc3339(),
    };
    Ledger::append(&path, entry).with_context(|| format!("the card is flashed and stamped, but recording it in {} failed", path.display()))
}
