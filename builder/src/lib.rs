//! The piha builder: cluster files, secrets, cards and images.

pub mod bmap;
pub mod board;
pub mod card;
pub mod catalog;
pub mod checksums;
pub mod cli;
pub mod commands;
pub mod compress;
pub mod disk;
pub mod distro;
pub mod docs;
pub mod doctor;
pub mod ext4;
pub mod fat;
pub mod flash;
pub mod host_apt;
pub mod init;
pub mod logging;
pub mod partition;
pub mod pipeline;
pub mod pki;
pub mod progress;
pub mod render;
pub mod secrets_dir;
pub mod stamp;
pub mod status;
pub mod validate;

// Old paths of the pipeline's modules, kept while callers move to `pipeline::`.
pub use pipeline as build;
pub use pipeline::agent as agent_bin;
pub use pipeline::agent::cross;
pub use pipeline::customize::{self, units};
pub use pipeline::{assemble, manifest, plan, preflight, rootfs};
