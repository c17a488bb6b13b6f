//! `piha stamp`: give a card (or an image file) its node identity, or write a
//! bare PIHA-CFG image.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use anyhow::{Context, bail};
use piha_runner::{Runner, SystemRunner};

use crate::card::stamp::{self, Identity, Stamped};
use crate::cli::StampOpts;
use crate::device::claim::{self, Gate};
use crate::device::target::FileTarget;
use crate::inputs::cluster::load_cluster;

pub fn run(opts: &StampOpts) -> anyhow::Result<()> {
    let cluster_path = &opts.cluster.cluster;
    let cluster = load_cluster(cluster_path)?;
    let secrets_dir = opts.cluster.secrets_dir();
    let id = Identity {
        cluster: &cluster,
        cluster_path,
        secrets_dir: &secrets_dir,
        node: &opts.node,
    };
    // An unknown node or unreadable secrets fail here, before any target is opened.
    stamp::check(id)?;
    let stamped = match (&opts.partition_image, &opts.target) {
        (Some(out), _) => stamp::partition_image(id, out)?,
        (None, Some(target)) => onto_target(id, target, opts.allow_non_removable, &SystemRunner)?,
        (None, None) => bail!("give a TARGET (image file or block device) or --partition-image OUT"),
    };
    println!("{}", stamped.summary());
    Ok(())
}

/// An image file is stamped in place; a block device first passes the same
/// gates as `piha flash` and is held exclusively while it is written.
fn onto_target(id: Identity<'_>, target: &Path, allow_non_removable: bool, runner: &dyn Runner) -> anyhow::Result<Stamped> {
    let meta = std::fs::metadata(target).with_context(|| format!("opening {}", target.display()))?;
    if meta.file_type().is_block_device() {
        let gate = Gate {
            // The PIHA-CFG partition must lie inside the device; the stamp checks that.
            min_size: 0,
            allow_non_removable,
        };
        let info = claim::check(target, gate, runner)?;
        eprintln!("piha: target {}", info.describe());
        let mut held = claim::claim(&info)?;
        let stamped = stamp::onto(id, &mut held.target)?;
        held.finish();
        return Ok(stamped);
    }
    if !meta.is_file() {
        bail!("{} is neither an image file nor a block device", target.display());
    }
    let mut file = FileTarget::open_existing(target).with_context(|| format!("opening {} for writing", target.display()))?;
    stamp::onto(id, &mut file)
}
