//! The piha builder: cluster files, secrets, cards and images.
//!
//! Layers, top to bottom (an arrow only points down; `arch` and `progress`
//! are leaves every layer may use):
//! - `commands`: one module per subcommand: parse, call the library, print;
//! - `pipeline`: `piha build`, stage by stage;
//! - `card`: what goes onto a card (secrets, PKI, stamping, flashing, the ledger);
//! - `device`: block-device gates, write targets, writing and verifying;
//! - `inputs`: the cluster, board and distro files, loaded and validated once;
//! - `host`: the build host's tools and apt sources;
//! - `image`: on-disk formats (partition tables, ext4, FAT, bmap, compression).

pub mod arch;
pub mod card;
pub mod cli;
pub mod commands;
pub mod day2;
pub mod device;
pub mod host;
pub mod image;
pub mod inputs;
pub mod lab;
pub mod logging;
pub mod pipeline;
pub mod progress;
