//! On-disk formats: partition tables, filesystems, block maps, compression,
//! digests and the image-info record.

pub mod bmap;
pub mod compress;
pub(crate) mod digest;
pub(crate) mod disk;
pub mod ext4;
pub mod fat;
pub(crate) mod info;
pub mod partition;
