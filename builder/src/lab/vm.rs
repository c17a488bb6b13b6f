//! The VMs: QEMU command lines per machine kind, power on, a clean shutdown
//! through ACPI (QMP `system_powerdown`), and a power cut (QMP `quit`, then
//! SIGKILL). QEMU runs daemonized inside the lab's namespace, so its tap is
//! opened there and nothing it does reaches the host's network.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use piha_runner::{Cmd, Runner};
use serde::{Deserialize, Serialize};

use super::dir::LabDir;

/// UEFI firmware: the code (read-only) and the template of its variables.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// How long a clean shutdown may take before it becomes a power cut.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// The kind of VM a board runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Machine {
    /// qemu-system-x86_64 q35 with OVMF: the amd64 board.
    Amd64Uefi,
    /// qemu-system-aarch64 `-M virt` with AAVMF: the arm64-uefi board.
    Arm64Uefi,
}

impl Machine {
    pub fn program(self) -> &'static str {
        match self {
            Machine::Amd64Uefi => "qemu-system-x86_64",
            Machine::Arm64Uefi => "qemu-system-aarch64",
        }
    }

    pub fn firmware(self) -> (&'static str, &'static str) {
        match self {
            Machine::Amd64Uefi => (OVMF_CODE, OVMF_VARS),
            Machine::Arm64Uefi => (AAVMF_CODE, AAVMF_VARS),
        }
    }
}

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when /dev/kvm exists and this machine is not itself a VM (nested KVM hangs on some hosts), else TCG.
    Auto,
    /// Hardware virtualisation (same-architecture VMs only).
    Kvm,
    /// Software emulation: slow, works everywhere.
    Tcg,
}

impl Accel {
    /// What `auto` means on this host.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto => {
                let nested = std::fs::read_to_string("/proc/cpuinfo")
                    .map(|c| {
                        c.lines()
                            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
                    })
                    .unwrap_or(true);
                if Path::new("/dev/kvm").exists() && !nested {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            other => other,
        }
    }

    fn for_machine(self, machine: Machine) -> &'static str {
        // KVM only runs guests of the host's own architecture.
        match (self, machine, std::env::consts::ARCH) {
            (Accel::Kvm, Machine::Amd64Uefi, "x86_64") | (Accel::Kvm, Machine::Arm64Uefi, "aarch64") => "kvm",
            _ => "tcg",
        }
    }
}

/// What one VM is given.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub machine: Machine,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u32,
    pub tap: &'a str,
    pub mac: &'a str,
}

/// The command that powers the VM on: QEMU inside `namespace`, daemonized.
pub fn argv(dir: &LabDir, namespace: &str, spec: &Spec<'_>) -> Vec<String> {
    let name = spec.name;
    let (code, _) = spec.machine.firmware();
    let mut a: Vec<String> = vec![
        "ip".into(),
        "netns".into(),
        "exec".into(),
        namespace.into(),
        spec.machine.program().into(),
    ];
    let push = |a: &mut Vec<String>, items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&mut a, &["-name", name, "-accel", spec.accel.for_machine(spec.machine)]);
    match spec.machine {
        Machine::Amd64Uefi => push(&mut a, &["-machine", "q35"]),
        Machine::Arm64Uefi => push(&mut a, &["-machine", "virt", "-cpu", "cortex-a72"]),
    }
    push(&mut a, &["-smp", &spec.cpus.to_string(), "-m", &spec.memory_mib.to_string()]);
    push(&mut a, &["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={code}")]);
    push(
        &mut a,
        &[
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", dir.firmware_vars(name).display()),
        ],
    );
    push(
        &mut a,
        &["-drive", &format!("file={},format=raw,if=virtio", dir.disk(name).display())],
    );
    push(
        &mut a,
        &["-netdev", &format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap)],
    );
    // PCI slot 2 on q35 names the NIC enp0s2, as on piha's single-VM boots.
    let nic = match spec.machine {
        Machine::Amd64Uefi => format!("virtio-net-pci,netdev=n0,addr=0x2,mac={}", spec.mac),
        Machine::Arm64Uefi => format!("virtio-net-pci,netdev=n0,mac={}", spec.mac),
    };
    push(&mut a, &["-device", &nic]);
    // Entropy from the host: without it, six VMs sharing two emulated cores
    // starve the guests' random pools and ssh-keygen waits minutes at boot.
    push(&mut a, &["-device", "virtio-rng-pci"]);
    // The console is appended to across power cycles: one log per node.
    push(
        &mut a,
        &[
            "-chardev",
            &format!("file,id=console,path={},append=on", dir.console(name).display()),
            "-serial",
            "chardev:console",
        ],
    );
    push(&mut a, &["-display", "none", "-monitor", "none"]);
    push(&mut a, &["-qmp", &format!("unix:{},server=on,wait=off", dir.qmp(name).display())]);
    push(&mut a, &["-daemonize", "-pidfile", &dir.pidfile(name).display().to_string()]);
    a
}

/// Powers the VM on with its recorded command line. QEMU daemonizes once the
/// VM runs, so an error (a missing tap, a bad disk) is returned here.
pub fn power_on(runner: &dyn Runner, argv: &[String]) -> anyhow::Result<()> {
    let Some((program, args)) = argv.split_first() else {
        bail!("empty QEMU command line")
    };
    runner.run(&Cmd::new(program.as_str()).args(args)).context("starting QEMU")?;
    Ok(())
}

/// The QEMU process of a node, if it runs.
pub fn pid(dir: &LabDir, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.pidfile(name)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // A recycled pid belongs to some other program.
    let ours = String::from_utf8_lossy(&cmdline).contains(&dir.pidfile(name).display().to_string());
    ours.then_some(pid)
}

pub fn running(dir: &LabDir, name: &str) -> bool {
    pid(dir, name).is_some()
}

/// A clean shutdown: the ACPI power button, then wait for QEMU to exit; a
/// power cut if the guest has not stopped within [`SHUTDOWN_TIMEOUT`].
pub fn shut_down(dir: &LabDir, name: &str) -> anyhow::Result<()> {
    if !running(dir, name) {
        return Ok(());
    }
    qmp(&dir.qmp(name), "system_powerdown").with_context(|| format!("asking {name} to shut down"))?;
    if wait_exit(dir, name, SHUTDOWN_TIMEOUT) {
        return Ok(());
    }
    log::warn!("{name} did not shut down within {}s: cutting its power", SHUTDOWN_TIMEOUT.as_secs());
    power_cut(dir, name)
}

/// Pulls the plug: QMP `quit`, and SIGKILL if QEMU does not go.
pub fn power_cut(dir: &LabDir, name: &str) -> anyhow::Result<()> {
    let Some(pid) = pid(dir, name) else { return Ok(()) };
    let _ = qmp(&dir.qmp(name), "quit");
    if wait_exit(dir, name, Duration::from_secs(5)) {
        return Ok(());
    }
    kill(pid);
    if wait_exit(dir, name, Duration::from_secs(10)) {
        Ok(())
    } else {
        bail!("QEMU of {name} (pid {pid}) does not exit")
    }
}

pub fn kill(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

fn wait_exit(dir: &LabDir, name: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if !running(dir, name) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    !running(dir, name)
}

#[derive(Deserialize)]
struct QmpReply {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    #[serde(rename = "return")]
    ret: Option<serde_json::Value>,
}

/// One QMP command without arguments: the greeting, `qmp_capabilities`, the
/// command; an error reply is an error.
pub fn qmp(socket: &Path, command: &str) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).context("reading the QMP greeting")?;
    for cmd in ["qmp_capabilities", command] {
        writeln!(writer, "{{\"execute\":\"{cmd}\"}}")?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                // `quit` closes the socket as it answers.
                if cmd == "quit" {
                    return Ok(());
                }
                bail!("QMP closed before answering {cmd}");
            }
            let reply: QmpReply = serde_json::from_str(&line).with_context(|| format!("QMP said {line:?}"))?;
            if let Some(e) = reply.error {
                bail!("QMP {cmd}: {e}");
            }
            if reply.ret.is_some() {
                break;
            }
            // Anything else is an asynchronous event: keep reading.
        }
    }
    Ok(())
}

/// A copy of the firmware's variable store for one VM.
pub fn firmware_vars(machine: Machine, to: &Path) -> anyhow::Result<PathBuf> {
    let (_, vars) = machine.firmware();
    std::fs::copy(vars, to).with_context(|| format!("copying {vars} to {}", to.display()))?;
    Ok(to.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Accel, Machine, Spec, argv};
    use crate::lab::dir::LabDir;

    #[test]
    fn amd64_vm_runs_in_the_namespace_on_its_tap_with_a_persistent_console() {
        let dir = LabDir::new(Path::new("/l")).unwrap();
        let spec = Spec {
            name: "cp1",
            machine: Machine::Amd64Uefi,
            accel: Accel::Tcg,
            cpus: 1,
            memory_mib: 768,
            tap: "tap1",
            mac: "52:54:00:00:00:01",
        };
        let a = argv(&dir, "piha-lab-1", &spec).join(" ");
        assert!(
            a.starts_with("ip netns exec piha-lab-1 qemu-system-x86_64 -name cp1 -accel tcg -machine q35"),
            "{a}"
        );
        assert!(a.contains("-netdev tap,id=n0,ifname=tap1,script=no,downscript=no"), "{a}");
        assert!(a.contains("virtio-net-pci,netdev=n0,addr=0x2,mac=52:54:00:00:00:01"), "{a}");
        assert!(a.contains("file,id=console,path=/l/nodes/cp1/console.log,append=on"), "{a}");
        assert!(a.contains("-daemonize -pidfile /l/nodes/cp1/qemu.pid"), "{a}");
        assert!(!a.contains("poweroff"), "lab VMs stay up after the agent: {a}");
    }

    #[test]
    fn kvm_is_only_used_for_the_hosts_own_architecture() {
        let dir = LabDir::new(Path::new("/l")).unwrap();
        let spec = Spec {
            name: "a",
            machine: Machine::Arm64Uefi,
            accel: Accel::Kvm,
            cpus: 1,
            memory_mib: 512,
            tap: "tap0",
            mac: "52:54:00:00:00:02",
        };
        let a = argv(&dir, "ns", &spec).join(" ");
        if std::env::consts::ARCH == "x86_64" {
            assert!(a.contains("-accel tcg"), "{a}");
        }
    }
}
