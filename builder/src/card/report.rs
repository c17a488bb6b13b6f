//! Reading back what the agent reported on a card: `status.json` and the
//! stamped `node.yaml` (and the build's `image.json`) from its PIHA-CFG filesystem, without mounting. Used by
//! `piha status TARGET` and by `piha lab status` on a running VM's disk.

use std::fs::File;
use std::path::Path;

use anyhow::Context;
use piha_config::node::{CONFIG_LABEL, NODE_FILE};
use piha_config::status::{STATUS_FILE, Status};

use crate::image::info::{IMAGE_INFO_FILE, ImageInfo};
use crate::image::{fat, partition};

/// The raw bytes of status.json and node.yaml on `target`'s PIHA-CFG (each
/// `None` when absent).
pub struct Report {
    pub status: Option<Vec<u8>>,
    pub node_yaml: Option<String>,
    /// `image.json`, as `piha build` wrote it.
    pub image: Option<ImageInfo>,
}

impl Report {
    /// status.json parsed; `Ok(None)` when the node has not reported yet.
    pub fn parsed(&self, target: &Path) -> anyhow::Result<Option<Status>> {
        let Some(raw) = &self.status else { return Ok(None) };
        serde_json::from_slice(raw)
            .map(Some)
            .with_context(|| format!("{}: {STATUS_FILE} on {CONFIG_LABEL} is not valid", target.display()))
    }
}

/// Reads status.json and node.yaml from the PIHA-CFG filesystem of `target`.
pub fn read(target: &Path) -> anyhow::Result<Report> {
    let mut file = File::open(target).with_context(|| format!("opening {}", target.display()))?;
    let sector_size = partition::sector_size_of(&file);
    let table =
        partition::read_table(&mut file, sector_size).with_context(|| format!("reading the partition table of {}", target.display()))?;
    let part = partition::find_config(&mut file, &table, target)?;
    let mut read = |name: &str| -> anyhow::Result<Option<Vec<u8>>> {
        let slice = fscommon::StreamSlice::new(fat::ReadOnly(&mut file), part.start, part.start + part.size)?;
        fat::read_file(slice, name).with_context(|| format!("reading {name} from {CONFIG_LABEL} on {}", target.display()))
    };
    let status = read(STATUS_FILE)?;
    let node_yaml = read(NODE_FILE)?.map(|b| String::from_utf8_lossy(&b).into_owned());
    let image = read(IMAGE_INFO_FILE)?
        .map(|raw| ImageInfo::parse(&raw).with_context(|| format!("reading {IMAGE_INFO_FILE} from {}", target.display())))
        .transpose()?;
    Ok(Report { status, node_yaml, image })
}
