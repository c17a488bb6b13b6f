//! host-prep: swap off and kept off, kernel modules loaded now and at boot,
//! the sysctls kubeadm needs (IPVS's on directors), a check that the memory cgroup is enabled, and
//! time sync (certificates need a correct clock; a Pi has no RTC).
//!
//! Idempotent: every command here can run again with the same result, and
//! the files are rewritten only when they differ.

use anyhow::Context;
use piha_config::cluster::Role;
use piha_config::node::NodeConfig;
use piha_config::render::{self, CHRONY_SOURCES, SYSCTL_FILE, host_prep};
use piha_runner::Cmd;

use super::Env;
use crate::files;
use crate::paths::Paths;
use crate::units;
use piha_atomic::{self as atomic, Perm};

/// zram-generator's own config; an empty file in /etc turns zram swap off.
const ZRAM_GENERATOR: &str = "/usr/lib/systemd/system-generators/zram-generator";
const ZRAM_CONF: &str = "/etc/systemd/zram-generator.conf";

pub fn run(env: &Env, cfg: &NodeConfig) -> anyhow::Result<()> {
    let kubernetes = cfg.node.role != Role::Director;
    // Checked first: without the memory cgroup nothing later can work, and the
    // fix (kernel command line) is outside what the agent may change.
    if kubernetes {
        check_memory_cgroup(env.paths)?;
    }

    let rendered = render::host_prep_files(cfg).context("rendering the host preparation files")?;
    let changed = files::apply(env.paths, &rendered)?;

    if kubernetes {
        swap_off(env)?;
    }

    // Loaded now (the files in modules-load.d only act at boot).
    for module in host_prep::modules(cfg) {
        env.runner
            .run(&Cmd::new("modprobe").arg(*module))
            .with_context(|| format!("loading the kernel module {module}"))?;
    }
    // After the modules: the bridge sysctls exist only once br_netfilter is
    // loaded, a director's net.ipv4.vs.* only once ip_vs is.
    // systemd-sysctl applies every sysctl.d file, as at boot, without needing procps.
    if rendered.iter().any(|f| f.path == SYSCTL_FILE) {
        env.runner
            .run(&units::restart("systemd-sysctl.service"))
            .context("applying the sysctls")?;
    }

    if rendered.iter().any(|f| f.path == CHRONY_SOURCES) {
        if changed.iter().any(|p| p == CHRONY_SOURCES) {
            env.runner.run(&units::enable("chrony.service")).context("enabling chrony")?;
            env.runner
                .run(&units::restart("chrony.service"))
                .context("restarting chrony with the cluster's NTP servers")?;
        }
        wait_for_time_sync(env);
    }
    Ok(())
}

/// Swap off now, and kept off: the swap target masked (no swap unit is
/// pulled in at boot), swap lines in fstab commented out, zram swap disabled.
/// The kubelet refuses to run with swap on (by default).
fn swap_off(env: &Env) -> anyhow::Result<()> {
    env.runner.run(&Cmd::new("swapoff").arg("-a")).context("turning swap off")?;
    env.runner
        .run(&units::mask("swap.target"))
        .context("masking swap.target so swap stays off")?;
    comment_out_swap(env.paths)?;
    if env.paths.host(ZRAM_GENERATOR).exists() {
        let conf = env.paths.host(ZRAM_CONF);
        atomic::write_if_changed(&conf, b"# piha: no zram swap (the kubelet needs swap off)\n", Perm::root(0o644))
            .with_context(|| format!("writing {}", conf.display()))?;
    }
    Ok(())
}

/// Comments out `swap` entries in /etc/fstab (rewritten only if it has any).
fn comment_out_swap(paths: &Paths) -> anyhow::Result<()> {
    let fstab = paths.host("/etc/fstab");
    let Ok(text) = std::fs::read_to_string(&fstab) else { return Ok(()) };
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let is_swap = !line.trim_start().starts_with('#') && fields.get(2) == Some(&"swap");
            if is_swap {
                changed = true;
                format!("# disabled by piha-agent (the kubelet needs swap off): {line}")
            } else {
                line.to_string()
            }
        })
        .collect();
    if changed {
        let mut out = lines.join("\n");
        out.push('\n');
        atomic::write(&fstab, out.as_bytes(), Some(Perm::root(0o644))).with_context(|| format!("writing {}", fstab.display()))?;
    }
    Ok(())
}

/// The kubelet needs the memory cgroup controller. On cgroup v2 it is listed
/// in cgroup.controllers; on v1 it has its own hierarchy.
fn check_memory_cgroup(paths: &Paths) -> anyhow::Result<()> {
    let v2 = paths.host("/sys/fs/cgroup/cgroup.controllers");
    let found = match std::fs::read_to_string(&v2) {
        Ok(controllers) => {
            if controllers.split_whitespace().any(|c| c == "memory") {
                return Ok(());
            }
            format!("{} lists `{}`", v2.display(), controllers.trim())
        }
        Err(_) => {
            if paths.host("/sys/fs/cgroup/memory").is_dir() {
                return Ok(());
            }
            format!("neither {} nor a cgroup v1 memory hierarchy exists", v2.display())
        }
    };
    let cmdline = std::fs::read_to_string(paths.host("/proc/cmdline")).unwrap_or_default();
    let disabled = if cmdline.split_whitespace().any(|w| w == "cgroup_disable=memory") {
        " The kernel command line has `cgroup_disable=memory`: remove it."
    } else {
        ""
    };
    anyhow::bail!(
        "the memory cgroup is not enabled ({found}); the kubelet cannot run without it.{disabled} \
         (fix: on a Raspberry Pi, add `cgroup_enable=memory cgroup_memory=1` to the single line of cmdline.txt on the boot \
         partition and reboot; elsewhere add `cgroup_enable=memory` to the kernel command line)"
    )
}

/// Waits a bounded time for chrony to synchronise. Not fatal: a clock far
/// off makes kubeadm reject the cluster's certificates, and its error says
/// so; the wait only gives NTP a head start before kubeadm runs.
fn wait_for_time_sync(env: &Env) {
    let tries = env.timings.time_sync_tries.to_string();
    // waitsync [max-tries [max-correction [max-skew [interval]]]]; 0 disables the correction check.
    match env
        .runner
        .run(&Cmd::new("chronyc").args(["waitsync", tries.as_str(), "0", "0", "2"]))
    {
        Ok(_) => log::info!("the clock is synchronised"),
        Err(e) => log::warn!(
            "the clock is not synchronised yet ({e}); continuing: check the cluster's ntp servers if kubeadm rejects certificates"
        ),
    }
}

#[cfg(test)]
mod tests {
    use piha_config::render::{CHRONY_SOURCES, MODULES_FILE, SYSCTL_FILE};

    use crate::agent::Ending;
    use crate::testing::Scratch;

    #[test]
    fn swap_modules_sysctls_and_time_sync() {
        let s = Scratch::new("cp1");
        assert_eq!(s.run(), Ending::Done);
        let commands = s.commands();
        for want in [
            "swapoff -a",
            "systemctl mask swap.target --no-reload",
            "modprobe br_netfilter",
            "modprobe overlay",
            "modprobe ip_vs",
        ] {
            assert!(commands.contains(&want.to_string()), "{want}: {commands:#?}");
        }
        // The bridge sysctls need br_netfilter loaded first.
        let sysctl = s.position("systemctl restart systemd-sysctl.service").expect("sysctls applied");
        assert!(s.position("modprobe br_netfilter").unwrap() < sysctl);
        assert!(
            s.position("systemctl restart chrony.service").is_some(),
            "qemu-lab names an NTP server: {commands:#?}"
        );
        assert!(s.position("chronyc waitsync").is_some());
        assert!(s.read(MODULES_FILE).lines().any(|l| l == "br_netfilter"));
        assert!(s.read(SYSCTL_FILE).contains("net.ipv4.ip_forward = 1"));
        assert!(s.read(CHRONY_SOURCES).contains("10.0.2.2"));
        assert_eq!(s.mode(SYSCTL_FILE), 0o644);
        let fstab = s.read("/etc/fstab");
        assert!(fstab.contains("UUID=1 / ext4 defaults 0 1\n"), "{fstab}");
        assert!(
            fstab.contains("# disabled by piha-agent (the kubelet needs swap off): /swapfile none swap sw 0 0"),
            "{fstab}"
        );
    }

    #[test]
    fn a_director_keeps_its_swap_loads_ipvs_only_and_then_sets_ipvs_sysctls() {
        let s = Scratch::new("lb1");
        s.runner.rec.respond(
            "ipvsadm",
            Ok(piha_runner::Output {
                stdout: b"TCP  10.0.2.100:6443 wrr\n".to_vec(),
                stderr: Vec::new(),
            }),
        );
        assert_eq!(s.run(), Ending::Done);
        let commands = s.commands();
        assert!(
            !commands.iter().any(|c| c.starts_with("swapoff") || c == "modprobe br_netfilter"),
            "{commands:#?}"
        );
        // net.ipv4.vs.* exist only once ip_vs is loaded.
        let ip_vs = s.position("modprobe ip_vs").expect("ip_vs loaded");
        let sysctl = s.position("systemctl restart systemd-sysctl.service").expect("sysctls applied");
        assert!(ip_vs < sysctl, "{commands:#?}");
        assert!(s.read(SYSCTL_FILE).contains("net.ipv4.vs.expire_nodest_conn = 1\n"));
        assert!(s.read("/etc/fstab").contains("\n/swapfile none swap"));
    }

    #[test]
    fn a_missing_memory_cgroup_is_explained() {
        let s = Scratch::new("w1");
        std::fs::write(s.paths.host("/sys/fs/cgroup/cgroup.controllers"), "cpuset cpu io pids\n").unwrap();
        std::fs::create_dir_all(s.paths.host("/proc")).unwrap();
        std::fs::write(
            s.paths.host("/proc/cmdline"),
            "console=serial0,115200 cgroup_disable=memory root=LABEL=writable\n",
        )
        .unwrap();
        assert_eq!(s.run(), Ending::Failed);
        let error = s.status().error.unwrap();
        assert!(error.contains("memory cgroup is not enabled"), "{error}");
        assert!(error.contains("cgroup_enable=memory") && error.contains("cmdline.txt"), "{error}");
        assert!(error.contains("`cgroup_disable=memory`: remove it"), "{error}");
        assert!(s.position("swapoff").is_none(), "nothing is changed before the check");
    }
}
