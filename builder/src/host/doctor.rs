//! The host checks behind `piha doctor`: every host tool piha and its tests use, with its version and
//! how to install it. A build runs the required checks (and the arm64 ones for
//! a foreign-architecture image) as its preflight, so it fails in the first
//! second instead of deep inside a stage.

use std::io::Write;
use std::path::Path;

use piha_runner::{Cmd, Runner};
use serde::Serialize;

/// The e2fsprogs release whose `mke2fs -d` reads a tar file.
pub const MKE2FS_MIN: (u32, u32, u32) = (1, 47, 1);

/// Which builds or tests need a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// Every build.
    Required,
    /// Images for an architecture other than the host's (qemu-user binfmt).
    ForeignArch,
    /// Ubuntu images.
    Ubuntu,
    /// `piha flash` onto block devices.
    Flash,
    /// The test suite (QEMU boots, validators).
    Tests,
    /// The benchmarks under bench/.
    Bench,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub need: Need,
    pub ok: bool,
    /// Version or what was found.
    pub found: String,
    /// How to install or fix it; empty when ok.
    pub hint: String,
}

impl Check {
    fn new(name: &str, need: Need, result: Result<String, String>, hint: &str) -> Check {
        match result {
            Ok(found) => Check {
                name: name.to_string(),
                need,
                ok: true,
                found,
                hint: String::new(),
            },
            Err(why) => Check {
                name: name.to_string(),
                need,
                ok: false,
                found: why,
                hint: hint.to_string(),
            },
        }
    }
}

const SETUP: &str = "or run scripts/setup-host";

/// The first line of a command's output (stdout, else stderr) that has a digit in it.
fn version_line(runner: &dyn Runner, program: &str, args: &[&str]) -> Result<String, String> {
    match runner.run(&Cmd::new(program).args(args.iter().copied())) {
        Ok(out) => {
            let text = format!("{}\n{}", out.stdout_str(), String::from_utf8_lossy(&out.stderr));
            Ok(short(
                text.lines()
                    .find(|l| l.chars().any(|c| c.is_ascii_digit()))
                    .unwrap_or("present")
                    .trim(),
            ))
        }
        Err(e) => Err(short(&e.to_string())),
    }
}

fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(100).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Where a program is on PATH (for tools with no side-effect-free version flag).
fn on_path(program: &str) -> Result<String, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path).collect();
    // Root's tools, even when PATH lacks the sbin directories.
    dirs.extend(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from));
    dirs.iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .ok_or_else(|| format!("{program} is not installed"))
}

fn file_exists(paths: &[&str]) -> Result<String, String> {
    paths
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
        .ok_or_else(|| format!("none of {}", paths.join(", ")))
}

/// Parses `mke2fs 1.47.2 (1-Jan-2025)`.
pub fn parse_mke2fs_version(line: &str) -> Option<(u32, u32, u32)> {
    let word = line
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut parts = word
        .split('.')
        .map(|p| p.trim_end_matches(|c: char| !c.is_ascii_digit()).parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// mke2fs new enough, and actually able to populate from a tar (built with libarchive).
fn mke2fs_check(runner: &dyn Runner) -> Result<String, String> {
    let line = version_line(runner, "mke2fs", &["-V"])?;
    let v = parse_mke2fs_version(&line).ok_or_else(|| format!("cannot read the version from {line:?}"))?;
    if v < MKE2FS_MIN {
        return Err(format!("{line}: older than {}.{}.{}", MKE2FS_MIN.0, MKE2FS_MIN.1, MKE2FS_MIN.2));
    }
    mke2fs_reads_tar(runner).map_err(|e| format!("{line}, but `mke2fs -d file.tar` fails: {}", short(&format!("{e:#}"))))?;
    Ok(format!("{line}, -d tar works"))
}

fn mke2fs_reads_tar(runner: &dyn Runner) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tar_path = dir.path().join("probe.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path)?);
        let mut h = tar::Header::new_ustar();
        h.set_size(6);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "probe", &b"piha!\n"[..])?;
        b.into_inner()?.flush()?;
    }
    let img = dir.path().join("probe.ext4");
    std::fs::File::create(&img)?.set_len(4 << 20)?;
    runner.run(&Cmd::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-d"]).arg(&tar_path).arg(&img))?;
    Ok(())
}

fn binfmt_check() -> Result<String, String> {
    let p = "/proc/sys/fs/binfmt_misc/qemu-aarch64";
    match std::fs::read_to_string(p) {
        Ok(t) if t.lines().next() == Some("enabled") => Ok(format!("{p} enabled")),
        Ok(_) => Err(format!("{p} is registered but disabled")),
        Err(_) => Err(format!("{p} is not registered")),
    }
}

fn run_as_check() -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if uid == 0 {
        return Ok("root: mmdebstrap runs in root mode".into());
    }
    let user = std::env::var("USER").unwrap_or_default();
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    if subuid
        .lines()
        .any(|l| l.starts_with(&format!("{user}:")) || l.starts_with(&format!("{uid}:")))
    {
        Ok(format!("uid {uid} with subordinate ids: mmdebstrap runs in unshare mode"))
    } else {
        Err(format!(
            "uid {uid} has no /etc/subuid entry, so mmdebstrap can run neither in root nor in unshare mode"
        ))
    }
}

/// The checks every build needs, plus the foreign-architecture ones when asked.
pub fn build_checks(runner: &dyn Runner, foreign: bool, keyring: &Path) -> Vec<Check> {
    let mut v = vec![
        Check::new(
            "mmdebstrap",
            Need::Required,
            version_line(runner, "mmdebstrap", &["--version"]),
            &format!("apt-get install mmdebstrap, {SETUP}"),
        ),
        Check::new(
            "mke2fs",
            Need::Required,
            mke2fs_check(runner),
            &format!("apt-get install -t bookworm-backports e2fsprogs libarchive13 (needs >= 1.47.1 built with libarchive), {SETUP}"),
        ),
        Check::new(
            "debugfs",
            Need::Required,
            version_line(runner, "debugfs", &["-V"]),
            &format!("apt-get install e2fsprogs (debugfs zeroes the ext4 journal of every image), {SETUP}"),
        ),
        Check::new(
            "curl",
            Need::Required,
            version_line(runner, "curl", &["--version"]),
            &format!("apt-get install curl, {SETUP}"),
        ),
        Check::new(
            "cargo",
            Need::Required,
            if std::env::var_os("PIHA_AGENT_BIN").is_some() {
                Ok("not needed: PIHA_AGENT_BIN is set".into())
            } else {
                version_line(runner, "cargo", &["--version"])
            },
            "install Rust (https://rustup.rs), or set PIHA_AGENT_BIN to a built piha-agent",
        ),
        Check::new(
            "user",
            Need::Required,
            run_as_check(),
            "run piha build as root (sudo), or add /etc/subuid and /etc/subgid entries for unshare mode",
        ),
        Check::new(
            &format!("keyring {}", keyring.display()),
            Need::Required,
            file_exists(&[&keyring.to_string_lossy()]),
            "apt-get install debian-archive-keyring (Debian) or ubuntu-keyring (Ubuntu), or run scripts/setup-host",
        ),
    ];
    v.push(Check::new(
        "depmod",
        Need::Required,
        version_line(runner, "depmod", &["--version"]),
        &format!("apt-get install kmod (the image's module index is made on the host), {SETUP}"),
    ));
    if foreign {
        v.push(Check::new(
            "qemu-aarch64-static",
            Need::ForeignArch,
            version_line(runner, "qemu-aarch64-static", &["--version"]),
            &format!("apt-get install -t bookworm-backports qemu-user-static binfmt-support, {SETUP}"),
        ));
        v.push(Check::new(
            "binfmt qemu-aarch64",
            Need::ForeignArch,
            binfmt_check(),
            &format!("mount binfmt_misc and register /usr/lib/binfmt.d/qemu-aarch64.conf, {SETUP}"),
        ));
    }
    v
}

/// Every check `piha doctor` runs.
pub fn all_checks(runner: &dyn Runner) -> Vec<Check> {
    let mut v = build_checks(runner, true, Path::new("/usr/share/keyrings/debian-archive-keyring.gpg"));
    v.push(Check::new(
        "ubuntu-keyring",
        Need::Ubuntu,
        file_exists(&["/usr/share/keyrings/ubuntu-archive-keyring.gpg"]),
        &format!("apt-get install ubuntu-keyring, {SETUP}"),
    ));
    let tools: &[(&str, &str, &[&str], Need, &str)] = &[
        (
            "qemu-system-x86_64",
            "qemu-system-x86_64",
            &["--version"],
            Need::Tests,
            "apt-get install -t bookworm-backports qemu-system-x86",
        ),
        (
            "qemu-system-aarch64",
            "qemu-system-aarch64",
            &["--version"],
            Need::Tests,
            "apt-get install -t bookworm-backports qemu-system-arm",
        ),
        ("e2fsck", "e2fsck", &["-V"], Need::Tests, "apt-get install e2fsprogs"),
        ("mtools", "mdir", &["--version"], Need::Tests, "apt-get install mtools"),
        ("sfdisk", "sfdisk", &["--version"], Need::Tests, "apt-get install fdisk"),
        (
            "keepalived",
            "keepalived",
            &["--version"],
            Need::Tests,
            "apt-get install keepalived",
        ),
        ("openssl", "openssl", &["version"], Need::Tests, "apt-get install openssl"),
        // `piha lab`: the namespace, bridge and taps; ssh to the nodes; the single-VM tests' API forward.
        ("ip", "ip", &["-V"], Need::Tests, "apt-get install iproute2"),
        ("ssh", "ssh", &["-V"], Need::Tests, "apt-get install openssh-client"),
        ("socat", "socat", &["-V"], Need::Tests, "apt-get install socat"),
        ("bmaptool", "bmaptool", &["--version"], Need::Tests, "apt-get install bmap-tools"),
        (
            "fdtput",
            "fdtput",
            &["--version"],
            Need::Tests,
            "apt-get install device-tree-compiler",
        ),
        ("zstd", "zstd", &["--version"], Need::Tests, "apt-get install zstd"),
        ("lsblk", "lsblk", &["--version"], Need::Flash, "apt-get install util-linux"),
        ("blockdev", "blockdev", &["--version"], Need::Flash, "apt-get install util-linux"),
        ("partx", "partx", &["--version"], Need::Flash, "apt-get install util-linux"),
        ("genimage", "genimage", &["--version"], Need::Bench, "apt-get install genimage"),
    ];
    for (name, program, args, need, hint) in tools {
        v.push(Check::new(
            name,
            *need,
            version_line(runner, program, args),
            &format!("{hint}, {SETUP}"),
        ));
    }
    // Both print their version only after touching the kernel (ipvsadm loads ip_vs).
    for (program, package) in [("fsck.vfat", "dosfstools"), ("ipvsadm", "ipvsadm")] {
        v.push(Check::new(
            program,
            Need::Tests,
            on_path(program),
            &format!("apt-get install {package}, {SETUP}"),
        ));
    }
    v.push(Check::new(
        "OVMF",
        Need::Tests,
        file_exists(&["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd"]),
        &format!("apt-get install ovmf, {SETUP}"),
    ));
    v.push(Check::new(
        "AAVMF",
        Need::Tests,
        file_exists(&["/usr/share/AAVMF/AAVMF_CODE.fd"]),
        &format!("apt-get install qemu-efi-aarch64, {SETUP}"),
    ));
    v
}

/// How the arm64 agent will be built: information, never missing. The
/// pipeline knows the ways; the caller asks it and reports the answer here.
pub fn agent_way(way: &str) -> Check {
    Check::new("piha-agent for arm64", Need::ForeignArch, Ok(format!("built by: {way}")), "")
}

/// One line per check, for people.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = if c.ok { "ok     " } else { "MISSING" };
        let need = serde_json::to_value(c.need)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!("{mark} {:<28} [{need}] {}\n", c.name, c.found));
        if !c.ok {
            out.push_str(&format!("        fix: {}\n", c.hint));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use piha_runner::{Output, RecordingRunner};

    use super::{Need, build_checks, parse_mke2fs_version, render};

    #[test]
    fn mke2fs_versions() {
        assert_eq!(parse_mke2fs_version("mke2fs 1.47.2 (1-Jan-2025)"), Some((1, 47, 2)));
        assert_eq!(parse_mke2fs_version("mke2fs 1.47.0 (5-Feb-2023)"), Some((1, 47, 0)));
        assert!(parse_mke2fs_version("mke2fs 1.47.0") < Some(super::MKE2FS_MIN));
    }

    #[test]
    fn missing_tools_get_a_hint() {
        let r = RecordingRunner::new();
        r.respond("mmdebstrap", Err("not found".into()));
        r.respond(
            "mke2fs",
            Ok(Output {
                stdout: Vec::new(),
                stderr: b"mke2fs 1.47.0 (5-Feb-2023)\n".to_vec(),
            }),
        );
        let checks = build_checks(&r, false, std::path::Path::new("/nonexistent/keyring.gpg"));
        let mm = checks.iter().find(|c| c.name == "mmdebstrap").unwrap();
        assert!(!mm.ok && mm.need == Need::Required && mm.hint.contains("apt-get install mmdebstrap"));
        let mk = checks.iter().find(|c| c.name == "mke2fs").unwrap();
        assert!(!mk.ok && mk.found.contains("older than 1.47.1"), "{}", mk.found);
        assert!(render(&checks).contains("MISSING"));
    }
}
