//! The one ELF reader: which machine a binary is for, and whether it needs a
//! dynamic loader (a PT_INTERP program header). piha builds ELF64
//! little-endian binaries only (x86_64 and aarch64).

use std::path::Path;

use anyhow::bail;

use crate::arch::Arch;

/// Program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;

/// What the ELF header and program headers of a binary say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_machine`: 62 for x86_64, 183 for aarch64.
    pub machine: u16,
    /// A PT_INTERP header: the binary needs a dynamic loader.
    pub dynamic: bool,
}

/// Reads the ELF64 little-endian header and program headers of `bytes`
/// (`path` names it in errors).
pub fn parse(path: &Path, bytes: &[u8]) -> anyhow::Result<ElfInfo> {
    if bytes.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let short = || anyhow::anyhow!("{} has a truncated ELF header", path.display());
    let machine = u16_at(18).ok_or_else(short)?;
    let phoff = usize::try_from(u64_at(32).ok_or_else(short)?)?;
    let phentsize = usize::from(u16_at(54).ok_or_else(short)?);
    let phnum = usize::from(u16_at(56).ok_or_else(short)?);
    let mut dynamic = false;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize).ok_or_else(short)? == PT_INTERP {
            dynamic = true;
        }
    }
    Ok(ElfInfo { machine, dynamic })
}

/// Fails unless `bytes` is an executable for `arch`.
pub fn check_arch(path: &Path, bytes: &[u8], arch: Arch) -> anyhow::Result<ElfInfo> {
    let info = parse(path, bytes)?;
    if info.machine != arch.elf_machine() {
        bail!(
            "{} is an ELF binary for machine {}, not for {arch} (machine {}; fix: build piha-agent for {})",
            path.display(),
            info.machine,
            arch.elf_machine(),
            arch.rust_target()
        );
    }
    Ok(info)
}

/// Fails unless `bytes` is a statically linked executable for `arch`.
pub fn check_static(path: &Path, bytes: &[u8], arch: Arch) -> anyhow::Result<()> {
    if check_arch(path, bytes, arch)?.dynamic {
        bail!(
            "{} is dynamically linked; the agent must be static (RUSTFLAGS {} was overridden?)",
            path.display(),
            super::cross::STATIC_RUSTFLAGS
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{check_arch, check_static, parse};
    use crate::arch::Arch;

    /// An ELF64 header for `machine` with one program header of type `ptype`.
    fn elf(machine: u16, ptype: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&ptype.to_le_bytes());
        b
    }

    #[test]
    fn machine_and_interpreter() {
        let p = Path::new("a");
        assert!(check_arch(p, &elf(62, 1), Arch::Amd64).is_ok());
        let err = check_arch(p, &elf(62, 1), Arch::Arm64).unwrap_err().to_string();
        assert!(err.contains("not for arm64"), "{err}");
        assert!(check_static(p, &elf(183, 1), Arch::Arm64).is_ok());
        let err = check_static(p, &elf(183, 3), Arch::Arm64).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
    }

    #[test]
    fn not_elf_is_named() {
        let err = parse(Path::new("x"), b"#!/bin/sh\n").unwrap_err().to_string();
        assert!(err.contains("not a 64-bit"), "{err}");
        let err = parse(Path::new("x"), &elf(62, 1)[..40]).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn the_test_binary_is_for_the_host() {
        let exe = std::env::current_exe().unwrap();
        let info = parse(&exe, &std::fs::read(&exe).unwrap()).unwrap();
        assert_eq!(Some(info.machine), Arch::host().map(Arch::elf_machine));
    }
}
