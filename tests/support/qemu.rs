//! Boots an image under QEMU with software emulation (TCG: KVM hangs on these
//! nested machines) and collects the serial console. Test images power off by
//! themselves once the agent is done when QEMU hands them the fw_cfg entry
//! `opt/piha/poweroff` (test overlay, `poweroff-if-asked`), which every
//! machine here but raspi4b (no fw_cfg) gets, so a boot is "run until QEMU
//! exits, or time out"; raspi4b boots stop on a console marker instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// x86_64 q35 with OVMF.
    Amd64Uefi,
    /// aarch64 virt with AAVMF.
    Arm64Uefi,
    /// aarch64 virt booting a kernel directly (no firmware).
    Arm64Direct,
    /// aarch64 raspi4b booting a kernel, initrd and DTB directly, disk as SD card.
    Raspi4b,
}

#[derive(Debug, Clone)]
pub struct Boot {
    pub machine: Machine,
    pub disk: PathBuf,
    pub mem_mib: u32,
    /// Extra `-netdev user` options, e.g. `guestfwd=tcp:10.0.2.100:6443-tcp:127.0.0.1:PORT`.
    pub net_extra: Vec<String>,
    /// Direct kernel boot: kernel, initrd, dtb, command line.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub dtb: Option<PathBuf>,
    pub append: Option<String>,
    pub timeout: Duration,
    /// Where the serial console goes.
    pub console: PathBuf,
    /// More QEMU arguments, e.g. a second `-drive` or `-rtc base=...`.
    pub extra: Vec<String>,
}

impl Boot {
    pub fn new(machine: Machine, disk: &Path, console: &Path) -> Self {
        Boot {
            machine,
            disk: disk.to_path_buf(),
            mem_mib: 1024,
            net_extra: Vec::new(),
            kernel: None,
            initrd: None,
            dtb: None,
            append: None,
            timeout: Duration::from_secs(900),
            console: console.to_path_buf(),
            extra: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct BootResult {
    /// QEMU exited by itself (the guest powered off) rather than being killed.
    pub powered_off: bool,
    pub console: String,
    pub elapsed: Duration,
}

fn firmware(machine: Machine, scratch: &Path) -> Vec<String> {
    let (code, vars) = match machine {
        Machine::Amd64Uefi => ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        Machine::Arm64Uefi => ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
        _ => return Vec::new(),
    };
    let vars_copy = scratch.join("efivars.fd");
    std::fs::copy(vars, &vars_copy).expect("copy UEFI vars template");
    vec![
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars_copy.display()),
    ]
}

/// Asks the test overlay to power the guest off once piha-agent is done;
/// without it a test image stays up, as the VMs of `piha lab` do.
const POWEROFF_FW_CFG: &str = "name=opt/piha/poweroff,string=1";

fn args(b: &Boot) -> (String, Vec<String>) {
    let scratch = b.console.parent().expect("console in a dir");
    let mut a: Vec<String> = vec!["-accel".into(), "tcg".into(), "-nographic".into(), "-no-reboot".into()];
    a.extend(["-m".into(), b.mem_mib.to_string()]);
    a.extend([
        "-serial".into(),
        format!("file:{}", b.console.display()),
        "-monitor".into(),
        "none".into(),
    ]);
    // restrict=on: nothing the guest sends leaves through the host (the
    // network rule); only the explicit forwards below reach the host. The
    // init control plane's TLS probe of the VIP then times out, as on a LAN
    // where nobody holds the VIP yet.
    let mut net = "user,id=n0,net=10.0.2.0/24,restrict=on".to_string();
    for e in &b.net_extra {
        net.push(',');
        net.push_str(e);
    }
    let program = match b.machine {
        Machine::Amd64Uefi => {
            a.extend(["-machine".into(), "q35".into(), "-smp".into(), "2".into()]);
            a.extend(firmware(b.machine, scratch));
            a.extend(["-drive".into(), format!("file={},format=raw,if=virtio", b.disk.display())]);
            // Slot 2 pins the NIC name to enp0s2 (examples/qemu-lab.yaml matches w1 by it).
            a.extend(["-netdev".into(), net, "-device".into(), "virtio-net-pci,netdev=n0,addr=0x2".into()]);
            a.extend(["-fw_cfg".into(), POWEROFF_FW_CFG.into()]);
            "qemu-system-x86_64"
        }
        Machine::Arm64Uefi | Machine::Arm64Direct => {
            a.extend([
                "-machine".into(),
                "virt".into(),
                "-cpu".into(),
                "cortex-a72".into(),
                "-smp".into(),
                "2".into(),
            ]);
            a.extend(firmware(b.machine, scratch));
            a.extend(["-drive".into(), format!("file={},format=raw,if=virtio", b.disk.display())]);
            a.extend(["-netdev".into(), net, "-device".into(), "virtio-net-pci,netdev=n0".into()]);
            a.extend(["-fw_cfg".into(), POWEROFF_FW_CFG.into()]);
            "qemu-system-aarch64"
        }
        Machine::Raspi4b => {
            a.extend(["-machine".into(), "raspi4b".into()]);
            a.extend(["-drive".into(), format!("file={},format=raw,if=sd", b.disk.display())]);
            "qemu-system-aarch64"
        }
    };
    if let Some(k) = &b.kernel {
        a.extend(["-kernel".into(), k.display().to_string()]);
    }
    if let Some(i) = &b.initrd {
        a.extend(["-initrd".into(), i.display().to_string()]);
    }
    if let Some(d) = &b.dtb {
        a.extend(["-dtb".into(), d.display().to_string()]);
    }
    if let Some(ap) = &b.append {
        a.extend(["-append".into(), ap.clone()]);
    }
    a.extend(b.extra.iter().cloned());
    (program.to_string(), a)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots and waits until QEMU exits or the timeout passes; `stop_when` can end
/// the boot early when the console shows what the test waits for.
pub fn boot(b: &Boot, stop_when: Option<&dyn Fn(&str) -> bool>) -> BootResult {
    let (program, args) = args(b);
    eprintln!("booting: {program} {}", args.join(" "));
    let _ = std::fs::remove_file(&b.console);
    let child = Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e} (run scripts/setup-host)"));
    let mut child = KillOnDrop(child);
    let start = Instant::now();
    let mut powered_off = false;
    loop {
        if let Some(status) = child.0.try_wait().expect("wait qemu") {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "{program} failed ({status}): {err}");
            powered_off = true;
            break;
        }
        if start.elapsed() > b.timeout {
            break;
        }
        if let Some(f) = stop_when {
            if f(&console(&b.console)) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(child);
    BootResult {
        powered_off,
        console: console(&b.console),
        elapsed: start.elapsed(),
    }
}

fn console(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
