//! On-disk formats: partition tables, filesystems, block maps, compression,
//! digests and the image-info record.

pub mod bmap;
pub mod compress;
pub mod digest;
pub mod disk;
pub mod ext4;
pub mod fat;
pub mod info;
pub mod partition;
