//! From the plan to stage 3's input: the boot partition's files (copied by
//! stage 2, plus the board's generated configuration) and the board's
//! partitions mapped onto [`DiskLayout`].

use std::path::Path;

use anyhow::Context;

use crate::image::fat::{FatFile, FatType};
use crate::image::info::IMAGE_INFO_FILE;
use crate::inputs::board::{FatKind, Firmware};
use crate::pipeline::assemble::{Content, DiskLayout, PartKind, PartSpec};
use crate::pipeline::customize::templates::{render_boot_file, render_cmdline};
use crate::pipeline::plan::Plan;

/// The boot partition's files: `copied` (from the root filesystem) with the
/// board's generated configuration files in place of copies of the same name
/// (a package's own config.txt).
pub fn boot_files(plan: &Plan, mut copied: Vec<FatFile>) -> anyhow::Result<Vec<FatFile>> {
    let board = &plan.req.board;
    if !board.boot.generates_config(plan.req.distro.family) {
        return Ok(copied);
    }
    let cmdline = render_cmdline(plan)?;
    for (path, template) in &board.boot.config {
        copied.retain(|f| !f.path.eq_ignore_ascii_case(path));
        copied.push(FatFile::new(path.clone(), render_boot_file(plan, path, template, &cmdline)?));
    }
    Ok(copied)
}

/// What stage 3 gets: the image's identity, its root tarball, and its epoch.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub info_json: &'a str,
    pub root_tar: &'a Path,
    /// Every identifier on the disk derives from it.
    pub input_hash: &'a str,
    pub epoch: u64,
}

/// Maps the board's partitions onto the assembler's layout: boot, PIHA-CFG, root.
pub fn disk_layout(plan: &Plan, boot_files: Vec<FatFile>, inputs: &Inputs) -> anyhow::Result<DiskLayout> {
    let b = &plan.req.board;
    let p = &b.partitions;
    let table = b.partition_table;
    let boot_kind = match b.firmware {
        Firmware::Uefi => PartKind::Esp,
        Firmware::Rpi => PartKind::BootFat,
    };
    let fat_type = p.boot.fat.map(|f| match f {
        FatKind::Fat16 => FatType::Fat16,
        FatKind::Fat32 => FatType::Fat32,
    });
    let mut seed = [0u8; 32];
    hex::decode_to_slice(inputs.input_hash, &mut seed).context("input hash is not 32 bytes of hex")?;
    let config_label = piha_config::node::CONFIG_LABEL.to_string();
    let boot = PartSpec {
        name: p.boot.label.clone(),
        kind: boot_kind,
        size_bytes: Some(p.boot.size_mib << 20),
        content: Content::Fat {
            label: p.boot.label.clone(),
            fat_type,
            files: boot_files,
        },
    };
    let config = PartSpec {
        name: config_label.clone(),
        kind: PartKind::Config,
        size_bytes: Some(p.config.size_mib << 20),
        content: Content::Fat {
            label: config_label,
            fat_type: None,
            files: vec![FatFile::new(IMAGE_INFO_FILE, inputs.info_json.as_bytes().to_vec())],
        },
    };
    let root = PartSpec {
        name: p.root.label.clone(),
        kind: PartKind::Root,
        size_bytes: None,
        content: Content::Ext4 {
            label: p.root.label.clone(),
            tar: inputs.root_tar.to_path_buf(),
            free_bytes: p.root.free_mib << 20,
        },
    };
    Ok(DiskLayout {
        table,
        arch: plan.arch,
        partitions: vec![boot, config, root],
        seed,
        epoch: inputs.epoch,
    })
}
