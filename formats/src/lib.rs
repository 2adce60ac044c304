//! disksynth's on-disk format generators. Each turns a description (a host
//! directory as a [`tree::Tree`], options) into a [`synth::RegionMap`]:
//! metadata bytes in memory, file contents mapped lazily from host files,
//! free space as holes. Layout is computed first and is pure; serving bytes
//! is the region map's job, so no exporter knows any format.
//!
//! - [`fat`]: FAT12/16/32 from a directory (`disksynth floppy`).
//! - [`ext4`]: ext4 from a directory (`disksynth ext4`).
//! - [`iso`]: ISO 9660 with Rock Ridge and Joliet from a directory (`disksynth iso`).
//! - [`partition`]: GPT, MBR and hybrid tables; whole disks whose partitions
//!   are other devices (every generator's partition table comes from here).
//! - [`hash`]: the stable hash every derived identifier comes from.
//! - [`detect`]: an image's format from its magic (raw, xz, qcow2, refused ones).

pub mod bootstub;
mod cache;
pub mod detect;
pub mod ext4;
pub mod fat;
pub mod hash;
pub mod iso;
mod par;
pub mod partition;
pub mod qcow2;
mod sparse;
#[cfg(test)]
mod testutil;
mod time;
pub mod xz;
