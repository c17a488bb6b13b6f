//! The piha builder: cluster files, secrets, cards and images.

pub mod build;
pub mod catalog;
pub mod cli;
pub mod docs;
pub mod doctor;
pub mod init;
pub mod logging;
pub mod render;
pub mod stamp;
pub mod status;
pub mod validate;
