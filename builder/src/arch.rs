//! The CPU architectures piha builds images for, and every name and number
//! each one goes by: Debian's, Rust's, the GNU toolchain's, ELF's and GPT's.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// CPU architecture. Board files spell it as Debian does (`amd64`, `arm64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// Debian's architecture name (`dpkg --print-architecture`).
    pub fn deb(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The kernel's and Rust's name (`uname -m`, the first part of the triple).
    pub fn machine(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The Rust target triple of the agent binary for this architecture.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The GNU toolchain prefix (`aarch64-linux-gnu-gcc`).
    pub fn gnu_prefix(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// ELF `e_machine` of its binaries (EM_X86_64 = 62, EM_AARCH64 = 183).
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// The architecture whose ELF `e_machine` this is.
    pub fn from_elf_machine(m: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_machine() == m)
    }

    /// The GPT partition type of a root filesystem for this architecture, from
    /// the Discoverable Partitions Specification
    /// (<https://uapi-group.org/specifications/specs/discoverable_partitions_specification/>).
    pub fn gpt_root_type(self) -> Uuid {
        match self {
            Arch::Amd64 => Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709),
            Arch::Arm64 => Uuid::from_u128(0xB921B045_1DF0_41C3_AF44_4C6F280D3FAE),
        }
    }

    /// The architecture of the machine piha runs on, if it is one images are built for.
    pub fn host() -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.machine() == std::env::consts::ARCH)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.deb())
    }
}

/// Parses Debian's name (`arm64`) or the kernel's (`aarch64`).
impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Arch, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.deb() == s || a.machine() == s)
            .ok_or_else(|| format!("unknown architecture {s:?}: expected amd64 or arm64"))
    }
}

#[cfg(test)]
mod tests {
    use super::Arch;

    #[test]
    fn every_name_parses_back() {
        assert_eq!("amd64".parse::<Arch>(), Ok(Arch::Amd64));
        assert_eq!("x86_64".parse::<Arch>(), Ok(Arch::Amd64));
        assert_eq!("arm64".parse::<Arch>(), Ok(Arch::Arm64));
        assert_eq!("aarch64".parse::<Arch>(), Ok(Arch::Arm64));
        assert!("riscv64".parse::<Arch>().is_err());
        assert_eq!(Arch::from_elf_machine(183), Some(Arch::Arm64));
        assert_eq!(Arch::from_elf_machine(62), Some(Arch::Amd64));
        assert_eq!(Arch::from_elf_machine(3), None);
        assert_eq!(Arch::Arm64.gpt_root_type().to_string(), "b921b045-1df0-41c3-af44-4c6f280d3fae");
    }
}
