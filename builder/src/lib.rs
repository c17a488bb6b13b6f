//! The piha builder: cluster files, secrets, cards and images.
//!
//! Layers, top to bottom (an arrow only points down):
//! - `commands`: one module per subcommand: parse, call the library, print;
//! - `inputs`: the cluster, board and distro files, loaded and validated once;
//! - `pipeline`: `piha build`, stage by stage;
//! - `card`: what goes onto a card (secrets, PKI, stamping, the flash ledger);
//! - `device`: block-device safety, write targets, writing and verifying;
//! - `image`: on-disk formats (partition tables, ext4, FAT, bmap, compression);
//! - `host`: the build host's tools and apt sources.

pub mod arch;
pub mod card;
pub mod cli;
pub mod commands;
pub mod device;
pub mod host;
pub mod image;
pub mod inputs;
pub mod logging;
pub mod progress;

pub mod agent_bin;
pub mod assemble;
pub mod build;
pub mod cross;
pub mod customize;
pub mod manifest;
pub mod plan;
pub mod preflight;
pub mod rootfs;
pub mod units;

// Old paths, kept while the pipeline moves; removed once every caller uses the layers.
pub use card::{pki, secrets as secrets_dir};
pub use host::{apt as host_apt, doctor};
pub use image::{bmap, compress, digest as checksums, disk, ext4, fat, partition};
pub use inputs::cluster as validate;
pub use inputs::{board, catalog, distro};
pub mod flash {
    //! Old paths of the device stack, kept while it moves.
    pub use crate::card::ledger;
    pub use crate::device::{safety, source, target, verify, write};
}
