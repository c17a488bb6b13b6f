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
pub mod pipeline;
pub mod progress;
