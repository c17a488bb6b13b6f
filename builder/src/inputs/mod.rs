//! The files a command reads: the cluster file, the board and distro files.
//! One loader for every command.

pub mod board;
pub mod catalog;
pub mod cluster;
pub mod distro;
