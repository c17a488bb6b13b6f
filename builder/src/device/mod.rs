//! Writing to cards: the one stack that `piha flash` and `piha stamp` share.
//!
//! - `safety`: what must be true of a block device before a byte is written;
//! - `source`: an image as a decompressed stream and its block map;
//! - `stream`: that stream in chunks, hashed and checked against the block map;
//! - `target`: where bytes go (`WriteTarget`: block device, file, failing);
//! - `write` + `verify`: the write order that never leaves a half-written
//!   card bootable, and the read-back past the page cache.

pub(crate) mod claim;
pub(crate) mod region;
pub(crate) mod safety;
pub mod source;
pub(crate) mod stream;
pub mod target;
pub(crate) mod verify;
pub mod write;
