//! Board files (`boards/<name>.yaml`): what a piece of hardware needs from an
//! image. Adding a board is adding a file; nothing here knows board names.
//!
//! A board names its architecture, firmware and partition table, the sizes of
//! the three partitions (boot, PIHA-CFG, root), the kernel and bootloader
//! packages per distro family, the initramfs module list (explicit, so
//! initramfs-tools never scans every module: the slow part of an emulated
//! arm64 build), the kernel command line, which files of the root
//! filesystem the firmware needs on the boot partition and which it gets
//! generated (systemd-boot loader entries, or the Pi's config.txt/cmdline.txt).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::inputs::catalog;

use crate::arch::Arch;

/// Distribution family: decides which package list of a board applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Debian,
    Ubuntu,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Debian => "debian",
            Family::Ubuntu => "ubuntu",
        }
    }
}

/// How the machine finds its kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// UEFI: an EFI system partition with a bootloader at EFI/BOOT/BOOT<ARCH>.EFI.
    Uefi,
    /// Raspberry Pi: the GPU firmware reads config.txt from the first FAT partition.
    Rpi,
}

use crate::image::partition::TableKind;

/// FAT variant of the boot partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FatKind {
    Fat16,
    Fat32,
}

/// `boards/<name>.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Must equal the file name without `.yaml`.
    pub name: String,
    /// One line for `piha build --help`-style listings.
    #[serde(default)]
    pub description: String,
    pub arch: Arch,
    pub firmware: Firmware,
    pub partition_table: TableKind,
    pub partitions: Partitions,
    /// Kernel and bootloader packages per distro family.
    pub packages: BTreeMap<Family, Vec<String>>,
    /// dpkg `path-exclude` patterns for this board (kernel modules it can never
    /// use). A pattern under `/lib/` also excludes its `/usr/lib/` twin.
    #[serde(default)]
    pub dpkg_exclude: Vec<String>,
    pub initramfs: Initramfs,
    /// Kernel command line; handlebars, e.g. `root=LABEL={{root_label}}`.
    pub cmdline: String,
    pub boot: Boot,
    /// Files written into the root filesystem, per distro family, before the
    /// initramfs is built at the end of stage 1: the inputs of the distro's
    /// own boot-partition tooling (Debian's `/etc/default/raspi-firmware`,
    /// Ubuntu's `/etc/flash-kernel/machine`), so that kernel upgrades on a
    /// running node write the same boot partition piha built. Handlebars, with
    /// `root_label`, `boot_label`, `boot_mount` and `board`.
    #[serde(default)]
    pub rootfs_files: BTreeMap<Family, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    pub boot: BootPartition,
    pub config: ConfigPartition,
    pub root: RootPartition,
}

/// The ESP (UEFI) or `system-boot` (Pi).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootPartition {
    /// FAT volume label (at most 11 characters) and GPT partition name.
    pub label: String,
    pub size_mib: u64,
    /// FAT variant; default: chosen by size.
    #[serde(default)]
    pub fat: Option<FatKind>,
    /// Where the node mounts it (fstab), e.g. `/boot/efi` or `/boot/firmware`.
    pub mount: String,
}

/// PIHA-CFG: its label is fixed (the agent and `piha stamp` look for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPartition {
    pub size_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootPartition {
    /// ext4 label (at most 16 characters); the kernel finds the root by it.
    pub label: String,
    /// Free space in the root filesystem beyond its content, before it grows
    /// to fill the card on first boot.
    pub free_mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    /// Modules the initramfs holds (initramfs-tools `MODULES=list`): exactly
    /// what it takes to find and mount the root filesystem on this board.
    pub modules: Vec<String>,
}

/// The boot partition's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Files copied from the root filesystem.
    pub files: Vec<BootFile>,
    /// Files generated from handlebars templates (variables: cmdline,
    /// root_label, boot_label, board, distro, arch), by path on the partition.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The distro families piha writes `config` for; empty: all. A family left
    /// out gets these files from its own package (Debian's raspi-firmware
    /// writes config.txt and cmdline.txt from `rootfs_files`).
    #[serde(default)]
    pub config_families: Vec<Family>,
}

impl Boot {
    /// Whether piha generates `config` for `family`.
    pub fn generates_config(&self, family: Family) -> bool {
        self.config_families.is_empty() || self.config_families.contains(&family)
    }
}

/// One rule copying root-filesystem files onto the boot partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFile {
    /// Path in the root filesystem without a leading `/`; `*` and `?` match
    /// within one path component. When several files match a rule whose `to`
    /// is a file, the one with the highest version sort wins (newest kernel).
    pub from: String,
    /// Destination on the boot partition. Ending in `/` (or `/` alone): a
    /// directory that receives every match under its own name.
    pub to: String,
    /// Only for this distro family.
    #[serde(default)]
    pub family: Option<Family>,
    /// A rule that matches nothing is an error unless optional.
    #[serde(default)]
    pub optional: bool,
}

impl BootFile {
    pub fn applies_to(&self, family: Family) -> bool {
        self.family.is_none_or(|f| f == family)
    }
}

impl Board {
    /// Parses a board file; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> anyhow::Result<Board> {
        let board: Board = super::parse_yaml(file, text, "see boards/amd64.yaml for every field")?;
        board.check(file)?;
        Ok(board)
    }

    /// Rules the schema cannot express; each error names the file and field.
    fn check(&self, file: &Path) -> anyhow::Result<()> {
        let f = file.display();
        if let Some(stem) = file.file_stem().and_then(|s| s.to_str()) {
            if stem != self.name {
                bail!("{f}: name: is {:?} but the file is {stem}.yaml (fix: make them equal)", self.name);
            }
        }
        let label = &self.partitions.boot.label;
        if label.is_empty() || label.len() > 11 || !label.is_ascii() {
            bail!("{f}: partitions.boot.label: {label:?} is not a FAT label (fix: 1 to 11 ASCII characters)");
        }
        let root = &self.partitions.root.label;
        if root.is_empty() || root.len() > 16 || !root.is_ascii() {
            bail!("{f}: partitions.root.label: {root:?} is not an ext4 label (fix: 1 to 16 ASCII characters)");
        }
        if self.partitions.boot.size_mib < 8 {
            bail!(
                "{f}: partitions.boot.size_mib: {} MiB is too small for a kernel and initrd (fix: at least 64)",
                self.partitions.boot.size_mib
            );
        }
        if self.partitions.config.size_mib < 1 {
            bail!("{f}: partitions.config.size_mib: must be at least 1 (fix: 16)");
        }
        if !self.partitions.boot.mount.starts_with('/') {
            bail!(
                "{f}: partitions.boot.mount: {:?} is not an absolute path (fix: e.g. /boot/efi)",
                self.partitions.boot.mount
            );
        }
        if self.firmware == Firmware::Rpi && self.partition_table != TableKind::Mbr {
            bail!("{f}: partition_table: a Raspberry Pi boots only from an MBR table (fix: partition_table: mbr)");
        }
        if self.firmware == Firmware::Rpi && self.partitions.boot.fat == Some(FatKind::Fat16) {
            bail!("{f}: partitions.boot.fat: the Pi firmware expects FAT32 on system-boot (fix: fat: fat32)");
        }
        if self.packages.is_empty() {
            bail!("{f}: packages: no kernel packages for any distro family (fix: add debian: [...] and/or ubuntu: [...])");
        }
        if self.initramfs.modules.is_empty() {
            bail!("{f}: initramfs.modules: empty, the kernel could not find its root (fix: list the storage and filesystem modules)");
        }
        if !self.cmdline.contains("root=") {
            bail!("{f}: cmdline: has no root= (fix: root=LABEL={{{{root_label}}}})");
        }
        for (i, b) in self.boot.files.iter().enumerate() {
            if b.from.starts_with('/') || b.from.contains("..") || b.to.contains("..") || b.to.is_empty() {
                bail!(
                    "{f}: boot.files[{i}]: from {:?} to {:?}: paths are relative, without `..` (fix: e.g. from: boot/vmlinuz-*, to: vmlinuz)",
                    b.from,
                    b.to
                );
            }
        }
        for (family, files) in &self.rootfs_files {
            for path in files.keys() {
                if path.starts_with('/') || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                    bail!(
                        "{f}: rootfs_files.{}: {path:?} is not a relative path in the root filesystem (fix: e.g. etc/default/raspi-firmware)",
                        family.as_str()
                    );
                }
            }
        }
        for pattern in &self.dpkg_exclude {
            if !pattern.starts_with('/') {
                bail!("{f}: dpkg_exclude: {pattern:?} is not an absolute path pattern (fix: e.g. /lib/modules/*/kernel/sound/*)");
            }
        }
        Ok(())
    }

    /// Kernel and bootloader packages for a family, or an error naming the fix.
    pub fn packages_for(&self, family: Family, file: &Path) -> anyhow::Result<&[String]> {
        match self.packages.get(&family) {
            Some(p) => Ok(p),
            None => {
                let have: Vec<&str> = self.packages.keys().map(|f| f.as_str()).collect();
                bail!(
                    "{}: packages: board {} has no {} packages, only {} (fix: build it with --distro {}, or add `{}: [kernel, bootloader]` if that family's kernel supports the board)",
                    file.display(),
                    self.name,
                    family.as_str(),
                    have.join(", "),
                    if have.contains(&"ubuntu") {
                        "ubuntu-noble"
                    } else {
                        "debian-bookworm"
                    },
                    family.as_str()
                )
            }
        }
    }

    /// The dpkg exclude patterns with merged-/usr twins added.
    pub fn dpkg_excludes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.dpkg_exclude {
            out.push(p.clone());
            if let Some(rest) = p.strip_prefix("/lib/") {
                out.push(format!("/usr/lib/{rest}"));
            }
        }
        out
    }
}

/// Where `boards/<name>.yaml` lives.
pub fn path(name: &str) -> PathBuf {
    catalog::data_dir().join("boards").join(format!("{name}.yaml"))
}

/// Loads a board by name, listing the boards that exist when it does not.
pub fn load(name: &str) -> anyhow::Result<(Board, PathBuf)> {
    let file = path(name);
    if !file.exists() {
        let known = catalog::catalog().map(|c| c.boards.join(", ")).unwrap_or_default();
        bail!("there is no board {name:?} (no {}); the boards are: {known}", file.display());
    }
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok((Board::parse(&file, &text)?, file))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Board, Family};

    const MINIMAL: &str = r#"
name: t
arch: amd64
firmware: uefi
partition_table: gpt
partitions:
  boot: {label: ESP, size_mib: 128, mount: /boot/efi}
  config: {size_mib: 16}
  root: {label: piha-root, free_mib: 256}
packages: {debian: [linux-image-amd64]}
dpkg_exclude: [/lib/modules/*/kernel/sound/*]
initramfs: {modules: [ext4]}
cmdline: root=LABEL={{root_label}}
boot:
  files:
    - {from: boot/vmlinuz-*, to: vmlinuz}
"#;

    #[test]
    fn minimal_board_parses() {
        let b = Board::parse(Path::new("boards/t.yaml"), MINIMAL).unwrap();
        assert_eq!(b.packages_for(Family::Debian, Path::new("t")).unwrap(), ["linux-image-amd64"]);
        assert!(b.packages_for(Family::Ubuntu, Path::new("t")).is_err());
        assert_eq!(
            b.dpkg_excludes(),
            ["/lib/modules/*/kernel/sound/*", "/usr/lib/modules/*/kernel/sound/*"]
        );
    }

    #[test]
    fn name_must_match_file() {
        let err = Board::parse(Path::new("boards/other.yaml"), MINIMAL).unwrap_err().to_string();
        assert!(err.contains("boards/other.yaml: name:"), "{err}");
    }

    #[test]
    fn rootfs_files_are_relative_and_config_families_filter() {
        let text = format!("{MINIMAL}rootfs_files:\n  debian:\n    /etc/default/x: \"y\"\n");
        let err = Board::parse(Path::new("boards/t.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("rootfs_files.debian: \"/etc/default/x\""), "{err}");
        let text = MINIMAL.replace("  files:\n", "  config_families: [ubuntu]\n  files:\n");
        let b = Board::parse(Path::new("boards/t.yaml"), &text).unwrap();
        assert!(b.boot.generates_config(Family::Ubuntu));
        assert!(!b.boot.generates_config(Family::Debian));
        assert!(
            Board::parse(Path::new("boards/t.yaml"), MINIMAL)
                .unwrap()
                .boot
                .generates_config(Family::Debian)
        );
    }

    #[test]
    fn pi_needs_mbr() {
        let text = MINIMAL.replace("firmware: uefi", "firmware: rpi");
        let err = Board::parse(Path::new("boards/t.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("partition_table"), "{err}");
    }
}
