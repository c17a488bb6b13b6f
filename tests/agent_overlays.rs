//! The files the agent's overlays put into images, checked with the real
//! tools: the realServer script and the directors' health endpoint in network
//! namespaces, the test profile's recording kubeadm/kubectl, and every unit
//! with `systemd-analyze verify`.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod agent_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agent_support::repo;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn overlay(rel: &str) -> PathBuf {
    repo().join("overlays").join(rel)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

#[test]
fn shell_scripts_are_posix_sh() {
    for script in [
        "agent/usr/lib/piha/realserver",
        "agent/usr/lib/piha/apicheck",
        "agent/usr/lib/piha/cfg-on-boot-disk",
        "test/usr/local/bin/kubeadm",
        "test/usr/local/bin/kubectl",
        "test/usr/lib/piha/test/collect",
        "test/usr/lib/piha/test/apiserver",
        "test/usr/lib/piha/test/standin.sh",
        "test/usr/lib/piha/test/poweroff-if-asked",
    ] {
        let path = overlay(script);
        let first = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(first, "#!/bin/sh", "{script}");
        // dash is Debian's /bin/sh and knows no bashisms.
        let out = Command::new("dash").arg("-n").arg(&path).output().expect("dash is installed");
        assert!(out.status.success(), "{script}: {}", text(&out));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o111,
            0o111,
            "{script} must be executable"
        );
    }
    // Sourced, not run: no #! line, but the same dialect.
    let lib = overlay("agent/usr/lib/piha/lvs-dr.sh");
    let out = Command::new("dash").arg("-n").arg(&lib).output().expect("dash is installed");
    assert!(out.status.success(), "lvs-dr.sh: {}", text(&out));
}

/// Runs `script` in a fresh network namespace, so the host's lo and sysctls are untouched.
fn in_netns(script: &str) -> Output {
    Command::new("unshare")
        .args(["-n", "sh", "-euc", script])
        .env("PATH", PATH)
        .output()
        .expect("unshare runs")
}

#[test]
fn realserver_puts_the_vip_on_lo_with_arp_sysctls_and_takes_it_away() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for a network namespace");
        return;
    }
    let rs = overlay("agent/usr/lib/piha/realserver");
    let show = r#"
        echo "lo=$(ip -o -4 addr show dev lo | awk '{print $4}' | tr '\n' ' ')"
        for d in all lo; do
            echo "$d=$(cat /proc/sys/net/ipv4/conf/$d/arp_ignore)/$(cat /proc/sys/net/ipv4/conf/$d/arp_announce)"
        done
    "#;
    // What it finds on `all` (2/1, say from a sysctl.d file) it puts back on `down`.
    let saved = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "ip link set lo up\nexport VIP=10.0.2.100 PIHA_REALSERVER_SAVED={saved}/arp\n\
         echo 2 >/proc/sys/net/ipv4/conf/all/arp_ignore\necho 1 >/proc/sys/net/ipv4/conf/all/arp_announce\n\
         {rs} up\n{rs} up\necho '-- up'\n{show}\n{rs} down\n{rs} down\necho '-- down'\n{show}",
        rs = rs.display(),
        saved = saved.path().display()
    );
    let out = in_netns(&script);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    let (up, down) = output.split_once("-- down").unwrap();
    let up = up.split_once("-- up").unwrap().1;
    assert!(
        up.contains("lo=127.0.0.1/8 10.0.2.100/32 \n"),
        "the VIP once, after two `up`s:\n{output}"
    );
    assert!(
        up.contains("all=1/2") && up.contains("lo=1/2"),
        "arp sysctls on all AND lo:\n{output}"
    );
    assert!(down.contains("lo=127.0.0.1/8 \n"), "{output}");
    assert!(
        down.contains("all=2/1") && down.contains("lo=0/0"),
        "the values found before `up`:\n{output}"
    );
    assert!(!saved.path().join("arp").exists(), "the saved values are forgotten once restored");
}

#[test]
fn realserver_refuses_a_missing_or_bad_vip() {
    let rs = overlay("agent/usr/lib/piha/realserver");
    // As root, inside a namespace: a script that wrongly accepted a VIP must
    // not change this machine's lo or sysctls. Without root it cannot anyway.
    let run = |vip: &str, action: &str| {
        let script = format!("VIP='{vip}' {} {action}", rs.display());
        if is_root() {
            in_netns(&script)
        } else {
            Command::new("sh").args(["-euc", &script]).env("PATH", PATH).output().unwrap()
        }
    };
    for vip in [
        "",
        "10.0.2",
        "10.0.2.100/32",
        "10..2.1",
        "vip",
        "10.0.2.256",
        "1.2.3.4.5",
        "0010.0.2.1",
        "010.0.2.1",
    ] {
        let out = run(vip, "up");
        assert_eq!(out.status.code(), Some(1), "VIP={vip:?}: {}", text(&out));
        assert!(text(&out).contains("/etc/piha/vip.env"), "{}", text(&out));
    }
    assert_eq!(run("10.0.2.100", "sideways").status.code(), Some(2));
}

#[test]
fn recording_kubeadm_records_calls_configs_and_leaves_what_kubeadm_would() {
    let port = free_port();
    let root = tempfile::tempdir().unwrap();
    let ca = make_ca(root.path(), KeyKind::Ec);
    let config = root.path().join("kubeadm.yaml");
    std::fs::write(&config, lab_config("cp1", port, None)).unwrap();
    let run = |args: &[&str]| {
        let out = kubeadm(root.path(), args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run(&["version", "-o", "short"]).trim(), "v0.0.0-piha-test-recorder");
    run(&["init", "--config", config.to_str().unwrap()]);
    let k8s = root.path().join("etc/kubernetes");
    assert!(k8s.join("admin.conf").exists() && k8s.join("manifests/kube-apiserver.yaml").exists());
    assert!(k8s.join("pki/apiserver.crt").exists() && k8s.join("pki/apiserver.key").exists());
    run(&["reset", "-f", "--v", "say \"hi\"\\"]);
    assert!(
        !k8s.join("admin.conf").exists() && !k8s.join("pki/ca.key").exists() && !k8s.join("pki/apiserver.crt").exists(),
        "reset empties what init left, PKI included"
    );
    assert!(!root.path().join("var/lib/piha-test/cluster-info.json").exists());
    // Without a CA, the stand-in's init fails as a kubeadm init without its
    // certificates would, and says why.
    let out = kubeadm(root.path(), &["init", &format!("--config={}", config.display())]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&format!("no cluster CA at {}", ca.display())), "{}", text(&out));

    let dir = root.path().join("var/lib/piha-test");
    let calls = calls(&dir);
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[1]["n"], 2);
    assert_eq!(calls[1]["argv"], serde_json::json!(["init", "--config", config.to_str().unwrap()]));
    assert_eq!(calls[1]["config"], "kubeadm-2.yaml");
    assert_eq!(calls[1]["outcome"], "ok");
    assert!(calls[1]["uptime"].is_number());
    assert_eq!(calls[0]["config"], "");
    assert_eq!(calls[2]["argv"][3], "say \"hi\"\\", "arguments survive JSON quoting");
    assert_eq!(calls[3]["config"], "kubeadm-4.yaml");
    assert!(calls[3]["outcome"].as_str().unwrap().contains("no cluster CA"), "{}", calls[3]);
    assert_eq!(
        std::fs::read_to_string(dir.join("kubeadm-2.yaml")).unwrap(),
        std::fs::read_to_string(&config).unwrap()
    );
}

#[test]
fn recording_kubectl_records_applied_manifests() {
    let root = tempfile::tempdir().unwrap();
    let manifest = root.path().join("flannel.yaml");
    std::fs::write(&manifest, "kind: List\n").unwrap();
    let out = Command::new(overlay("test/usr/local/bin/kubectl"))
        .args(["--kubeconfig", "/etc/kubernetes/admin.conf", "apply", "-f"])
        .arg(&manifest)
        .env("PIHA_TEST_ROOT", root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dir = root.path().join("var/lib/piha-test");
    let call: serde_json::Value = serde_json::from_str(std::fs::read_to_string(dir.join("kubectl-calls.jsonl")).unwrap().trim()).unwrap();
    assert_eq!(call["argv"][2], "apply");
    assert_eq!(call["file"], "kubectl-1.yaml");
    assert_eq!(std::fs::read_to_string(dir.join("kubectl-1.yaml")).unwrap(), "kind: List\n");
}

/// Copies a tree (files and directories; symlinks as symlinks).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&src).unwrap();
        if meta.is_dir() {
            copy_tree(&src, &dst);
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    // A root with the host's systemd units (targets the units refer to), both
    // overlays, and the executables the units run.
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("usr/lib/systemd/system");
    copy_tree(Path::new("/usr/lib/systemd/system"), &units);
    copy_tree(&overlay("agent"), root.path());
    copy_tree(&overlay("test"), root.path());
    for exe in ["usr/bin/piha-agent", "usr/bin/systemctl", "usr/bin/socat", "bin/true", "bin/sh"] {
        let p = root.path().join(exe);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ours = [
        "piha-agent.service",
        "boot-piha.mount",
        "piha-realserver.service",
        "piha-test-apiserver.service",
        "piha-apicheck.service",
        "piha-certs.service",
        "piha-certs.timer",
    ];
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(ours)
        .current_dir(&units)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze is installed");
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "{}",
        text(&out)
    );
}

#[test]
fn presets_enable_the_agent_and_leave_role_services_to_it() {
    let preset = std::fs::read_to_string(overlay("agent/usr/lib/systemd/system-preset/80-piha.preset")).unwrap();
    let lines: Vec<&str> = preset.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(
        lines,
        [
            "enable piha-agent.service",
            "disable piha-realserver.service",
            "disable piha-apicheck.service",
            "disable piha-certs.timer",
            "disable keepalived.service",
            "disable kubelet.service"
        ]
    );
    // The test profile powers the VM off after the agent (when QEMU asks for
    // it) through a drop-in, never through a unit that multi-user.target
    // would wait for.
    let dropin = std::fs::read_to_string(overlay("test/usr/lib/systemd/system/piha-agent.service.d/50-piha-test.conf")).unwrap();
    assert!(dropin.contains("ExecStopPost=/usr/lib/piha/test/collect\n"), "{dropin}");
    assert!(dropin.contains("ExecStopPost=/usr/lib/piha/test/poweroff-if-asked\n"), "{dropin}");
    assert!(
        !dropin.contains("systemctl --no-block poweroff"),
        "only poweroff-if-asked powers off: {dropin}"
    );
    let agent = std::fs::read_to_string(overlay("agent/usr/lib/systemd/system/piha-agent.service")).unwrap();
    assert!(agent.contains("Type=exec\n") && !agent.contains("RemainAfterExit"), "{agent}");
    // The agent unit's mount must be the unit for its mount point.
    let mount = std::fs::read_to_string(overlay("agent/usr/lib/systemd/system/boot-piha.mount")).unwrap();
    assert!(mount.contains("Where=/boot/piha\n") && mount.contains("What=/dev/disk/piha-cfg\n"));
    // Its device's wait drop-in is for that device.
    assert!(overlay("agent/usr/lib/systemd/system/dev-disk-piha\\x2dcfg.device.d/10-piha-wait.conf").is_file());
    let rules = std::fs::read_to_string(overlay("agent/usr/lib/udev/rules.d/61-piha-cfg.rules")).unwrap();
    assert!(
        rules.contains("PROGRAM==\"/usr/lib/piha/cfg-on-boot-disk %k\"") && rules.contains("SYMLINK+=\"disk/piha-cfg\""),
        "{rules}"
    );
}

/// udev's test for PIHA-CFG: only a partition on the root filesystem's disk
/// passes; another disk's is logged (`logger -t piha-cfg`) and refused.
/// findmnt, lsblk and logger are stubs here; the QEMU test boots a second
/// disk labelled PIHA-CFG for real.
#[test]
fn cfg_on_boot_disk_accepts_only_the_root_disks_partition() {
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("logged");
    let stub = |name: &str, body: &str| {
        let p = bin.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    stub("findmnt", "echo /dev/vda3");
    // lsblk -dno PKNAME /dev/X: the disk of each partition.
    stub("lsblk", r#"case "$3" in /dev/vda*) echo vda ;; /dev/sdb*) echo sdb ;; esac"#);
    stub("logger", &format!(r#"echo "$*" >>{}"#, log.display()));
    let run = |part: &str| {
        Command::new(overlay("agent/usr/lib/piha/cfg-on-boot-disk"))
            .arg(part)
            .env("PATH", format!("{}:{PATH}", bin.path().display()))
            .output()
            .unwrap()
    };
    assert!(run("vda2").status.success());
    assert!(!std::path::Path::new(&log).exists(), "nothing to say about the boot disk's own");
    assert!(!run("sdb1").status.success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("-t piha-cfg") && said.contains("ignoring the PIHA-CFG filesystem on sdb1 (disk sdb)") && said.contains("(vda)"),
        "{said}"
    );
    // A stick formatted without partitions: its disk is itself.
    assert!(!run("sdc").status.success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("on sdc (disk sdc)"), "{said}");
}

#[test]
fn poweroff_only_when_qemu_asks_through_fw_cfg() {
    let root = tempfile::tempdir().unwrap();
    let script = overlay("test/usr/lib/piha/test/poweroff-if-asked");
    let run = || {
        let out = Command::new(&script)
            .env("PIHA_TEST_ROOT", root.path())
            .env("PATH", PATH)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !run().contains("\npoweroff\n"),
        "no fw_cfg entry (raspi4b, real hardware, `piha lab`): stays up"
    );
    let entry = root.path().join("sys/firmware/qemu_fw_cfg/by_name/opt/piha/poweroff");
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("raw"), "0").unwrap();
    assert!(!run().contains("\npoweroff\n"), "opt/piha/poweroff=0: stays up");
    // What `-fw_cfg name=opt/piha/poweroff,string=1` shows the guest.
    std::fs::write(entry.join("raw"), "1").unwrap();
    assert!(run().ends_with("\npoweroff\n"));
    // Or, without fw_cfg (raspi4b), the kernel command line.
    std::fs::write(entry.join("raw"), "0").unwrap();
    std::fs::create_dir_all(root.path().join("proc")).unwrap();
    std::fs::write(root.path().join("proc/cmdline"), "console=ttyAMA0 piha.test-poweroff=10\n").unwrap();
    assert!(!run().contains("\npoweroff\n"), "only the exact word counts");
    std::fs::write(root.path().join("proc/cmdline"), "console=ttyAMA0 piha.test-poweroff=1 rw\n").unwrap();
    assert!(run().ends_with("\npoweroff\n"));
}

// ---- The stand-in API server and token discovery --------------------------
//
// The scripts run on the host with PIHA_TEST_ROOT, against a throwaway CA
// made with openssl and the lab's own rendered kubeadm.yaml (the goldens),
// with the VIP:6443 endpoint moved to 127.0.0.1 and a free port: every
// packet stays on loopback.

const LAB_TOKEN: &str = "abcdef.0123456789abcdef";
const GOLDEN_HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CLUSTER_INFO: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

#[derive(Clone, Copy)]
enum KeyKind {
    Ec,
    Rsa,
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A cluster CA under ROOT/etc/kubernetes/pki, as piha-agent places it; returns ca.crt.
fn make_ca(root: &Path, kind: KeyKind) -> PathBuf {
    let pki = root.join("etc/kubernetes/pki");
    std::fs::create_dir_all(&pki).unwrap();
    let key = match kind {
        KeyKind::Ec => ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        KeyKind::Rsa => ["-newkey", "rsa:2048", "-pkeyopt", "rsa_keygen_bits:2048"],
    };
    let out = Command::new("openssl")
        .args(["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=kubernetes"])
        .args(key)
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .arg("-keyout")
        .arg(pki.join("ca.key"))
        .arg("-out")
        .arg(pki.join("ca.crt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    pki.join("ca.crt")
}

/// Copies the CA of one test node to another (every control plane's card has it).
fn copy_ca(from: &Path, to: &Path) {
    let pki = to.join("etc/kubernetes/pki");
    std::fs::create_dir_all(&pki).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(from.join("etc/kubernetes/pki").join(f), pki.join(f)).unwrap();
    }
}

/// `node`'s rendered kubeadm.yaml of examples/qemu-lab.yaml, the API at
/// 127.0.0.1:`port`, and when given the discovery's CA hashes instead of the
/// golden's placeholder.
fn lab_config(node: &str, port: u16, hashes: Option<&[&str]>) -> String {
    let golden = std::fs::read_to_string(repo().join(format!("tests/golden/qemu-lab/{node}/etc/piha/kubeadm.yaml"))).unwrap();
    let mut text = golden
        .replace("10.0.2.100:6443", &format!("127.0.0.1:{port}"))
        .replace("bindPort: 6443", &format!("bindPort: {port}"));
    if let Some(hashes) = hashes {
        let list: String = hashes.iter().map(|h| format!("    - {h}\n")).collect();
        text = text.replace(&format!("    - {GOLDEN_HASH}\n"), &list);
    }
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    text
}

fn kubeadm_with(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(overlay("test/usr/local/bin/kubeadm"))
        .args(args)
        .env("PIHA_TEST_ROOT", root)
        .env("PATH", PATH)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn kubeadm(root: &Path, args: &[&str]) -> Output {
    kubeadm_with(root, args, &[])
}

fn calls(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("kubeadm-calls.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Writes `node`'s config into `root` and runs `kubeadm VERB --config` there.
fn kubeadm_config(root: &Path, verb: &str, config: &str, env: &[(&str, &str)]) -> Output {
    let path = root.join(format!("kubeadm-{verb}.yaml"));
    std::fs::write(&path, config).unwrap();
    kubeadm_with(root, &[verb, "--config", path.to_str().unwrap()], env)
}

/// `apiserver serve` of a node root, listening on 127.0.0.1 only; the whole
/// process group (socat and its forked handlers) is stopped on drop.
struct Server(std::process::Child);

impl Server {
    fn start(root: &Path, port: u16) -> Server {
        use std::os::unix::process::CommandExt;
        let child = Command::new(overlay("test/usr/lib/piha/test/apiserver"))
            .arg("serve")
            .env("PIHA_TEST_ROOT", root)
            .env("PIHA_TEST_BIND", "127.0.0.1")
            .env("PATH", PATH)
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("socat is installed (apt-get install socat)");
        let server = Server(child);
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "the stand-in API server never listened on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("--").arg(format!("-{}", self.0.id())).status();
        let _ = self.0.wait();
    }
}

/// GET `path` over TLS with `openssl s_client`, trusting only `ca` and
/// requiring 127.0.0.1 in the certificate; returns (status line, headers, body).
fn https_get(port: u16, path: &str, ca: &Path) -> (String, String, String) {
    let mut child = Command::new("timeout")
        .args([
            "10",
            "openssl",
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
            "-CAfile",
        ])
        .arg(ca)
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "GET {path}: {}", text(&out));
    let response = String::from_utf8(out.stdout).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {response:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

fn openssl_text(args: &[&str], file: &Path) -> String {
    let out = Command::new("openssl").args(args).arg(file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The CA's kubeadm discovery pin, computed here: SHA-256 (this file's own)
/// of the DER SubjectPublicKeyInfo that openssl derives from the CA's KEY
/// (the stand-in derives it from the certificate in cluster-info).
fn ca_pin(root: &Path) -> String {
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(root.join("etc/kubernetes/pki/ca.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    format!("sha256:{}", hex(&sha256(&out.stdout)))
}

/// The serving certificate's SANs as openssl prints them, in order.
fn sans(cert: &Path) -> Vec<String> {
    let ext = openssl_text(&["x509", "-noout", "-ext", "subjectAltName", "-in"], cert);
    ext.lines()
        .nth(1)
        .unwrap_or_default()
        .split(", ")
        .map(|s| s.trim().replace("IP Address:", "IP:"))
        .collect()
}

/// A control plane's stand-in: its serving certificate chains to the cluster
/// CA with kubeadm's SANs, in the CA's key type, and a joining control plane
/// makes the same (byte for byte) cluster-info as the init node.
#[test]
fn apiserver_certificate_has_kubeadms_sans_and_the_cas_key_type() {
    for (kind, key_alg) in [(KeyKind::Ec, "id-ecPublicKey"), (KeyKind::Rsa, "rsaEncryption")] {
        let port = free_port();
        let root = tempfile::tempdir().unwrap();
        let ca = make_ca(root.path(), kind);
        let out = kubeadm_config(root.path(), "init", &lab_config("cp1", port, None), &[]);
        assert!(out.status.success(), "{}", text(&out));
        let pki = root.path().join("etc/kubernetes/pki");
        let cert = pki.join("apiserver.crt");
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(&cert)
            .output()
            .unwrap();
        assert!(verify.status.success(), "openssl verify: {}", text(&verify));
        let dump = openssl_text(&["x509", "-noout", "-text", "-in"], &cert);
        assert!(dump.contains(&format!("Public Key Algorithm: {key_alg}")), "{dump}");
        assert!(
            dump.contains("TLS Web Server Authentication") && dump.contains("CA:FALSE"),
            "{dump}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(pki.join("apiserver.key")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            sans(&cert),
            [
                "DNS:cp1",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
                "IP:10.96.0.1",
                "IP:10.0.2.11",
                "IP:127.0.0.1",
                "IP:10.0.2.100",
                "DNS:qemu-lab-api",
                "DNS:cp2",
                "IP:10.0.2.12",
                "DNS:cp3",
                "IP:10.0.2.13",
            ],
            "node name, kubernetes.default…, service IP, advertise address, endpoint host, then certSANs"
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("var/lib/piha-test/apiserver.port"))
                .unwrap()
                .trim(),
            port.to_string()
        );

        // cp2 joins (against cp1's server) and makes its own certificate and
        // the same cluster-info.
        let _server = Server::start(root.path(), port);
        let cp2 = tempfile::tempdir().unwrap();
        copy_ca(root.path(), cp2.path());
        let pin = ca_pin(root.path());
        let out = kubeadm_config(cp2.path(), "join", &lab_config("cp2", port, Some(&[&pin])), &[]);
        assert!(out.status.success(), "{}", text(&out));
        let cp2_cert = cp2.path().join("etc/kubernetes/pki/apiserver.crt");
        let cp2_sans = sans(&cp2_cert);
        assert!(
            cp2_sans.starts_with(&["DNS:cp2".to_string()]) && cp2_sans.contains(&"IP:10.0.2.12".to_string()),
            "{cp2_sans:?}"
        );
        assert!(
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&ca)
                .arg(&cp2_cert)
                .output()
                .unwrap()
                .status
                .success()
        );
        let info = |r: &Path| std::fs::read_to_string(r.join("var/lib/piha-test/cluster-info.json")).unwrap();
        assert_eq!(
            info(cp2.path()),
            info(root.path()),
            "every control plane serves the same cluster-info"
        );
        assert!(cp2.path().join("etc/kubernetes/admin.conf").exists());
    }
}

/// The server: /readyz 200 over TLS that the cluster CA vouches for,
/// unknown paths 404, cluster-info in kubeadm's shape with a JWS that this
/// file's own HMAC-SHA256 reproduces, a log line per request, and many
/// clients at once while one hangs.
#[test]
fn apiserver_serves_readyz_cluster_info_and_404_concurrently() {
    let port = free_port();
    let root = tempfile::tempdir().unwrap();
    let ca = make_ca(root.path(), KeyKind::Ec);
    let out = kubeadm_config(root.path(), "init", &lab_config("cp1", port, None), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let _server = Server::start(root.path(), port);

    let (status, headers, body) = https_get(port, "/readyz", &ca);
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));
    assert!(
        headers.contains("Content-Length: 2\r\n") && headers.contains("Connection: close"),
        "{headers}"
    );
    for path in ["/healthz", "/livez"] {
        assert_eq!(https_get(port, path, &ca).0, "HTTP/1.1 200 OK", "{path}");
    }
    for path in ["/api/v1/namespaces/default/pods", "/readyz/etcd", "/"] {
        assert_eq!(https_get(port, path, &ca).0, "HTTP/1.1 404 Not Found", "{path}");
    }

    let (status, headers, body) = https_get(port, CLUSTER_INFO, &ca);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains(&format!("Content-Length: {}\r\n", body.len())), "{headers}");
    let cm: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["apiVersion"], "v1");
    assert_eq!(
        cm["metadata"],
        serde_json::json!({"name": "cluster-info", "namespace": "kube-public"})
    );
    let data = cm["data"].as_object().unwrap();
    let keys: Vec<&String> = data.keys().collect();
    assert_eq!(keys, ["jws-kubeconfig-abcdef", "kubeconfig"]);
    let kubeconfig = data["kubeconfig"].as_str().unwrap();
    let ca_data = base64(&std::fs::read(&ca).unwrap(), STANDARD);
    assert_eq!(
        kubeconfig,
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca_data}\n    server: https://127.0.0.1:{port}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
        )
    );
    let (id, secret) = LAB_TOKEN.split_once('.').unwrap();
    assert_eq!(
        data["jws-kubeconfig-abcdef"].as_str().unwrap(),
        jws(kubeconfig.as_bytes(), id, secret)
    );

    // A client that connects and says nothing must not hold up the others.
    let _hanging = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = std::time::Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let ca = ca.clone();
            std::thread::spawn(move || https_get(port, "/readyz", &ca).0)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), "HTTP/1.1 200 OK");
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(8),
        "8 clients took {:?}",
        start.elapsed()
    );

    let log = std::fs::read_to_string(root.path().join("var/lib/piha-test/apiserver-requests.log")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.ends_with(" 127.0.0.1 GET /readyz 200")).count(),
        9,
        "{log}"
    );
    assert!(
        log.contains(" 127.0.0.1 GET /readyz/etcd 404\n") && log.contains(&format!(" GET {CLUSTER_INFO} 200\n")),
        "{log}"
    );
}

/// A joining node's discovery: succeeds when one of the pins matches and the
/// token signs cluster-info; fails at once, loudly and on record, when the
/// token secret or the CA pin is wrong; gives up after its retry time when
/// nothing answers.
#[test]
fn join_does_token_discovery_and_fails_loudly_on_a_mismatch() {
    let port = free_port();
    let cp1 = tempfile::tempdir().unwrap();
    let ca = make_ca(cp1.path(), KeyKind::Ec);
    let out = kubeadm_config(cp1.path(), "init", &lab_config("cp1", port, None), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let _server = Server::start(cp1.path(), port);
    let pin = ca_pin(cp1.path());
    let other = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    let w1 = tempfile::tempdir().unwrap();
    let out = kubeadm_config(w1.path(), "join", &lab_config("w1", port, Some(&[other, &pin])), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("CA hash {pin} verified")), "{}", text(&out));
    assert_eq!(
        std::fs::read(w1.path().join("etc/kubernetes/pki/ca.crt")).unwrap(),
        std::fs::read(&ca).unwrap(),
        "a worker's join leaves the discovered CA"
    );
    assert!(w1.path().join("etc/kubernetes/kubelet.conf").exists());
    assert!(
        !w1.path().join("etc/kubernetes/pki/apiserver.crt").exists(),
        "no API server on a worker"
    );

    let mismatch = |config: String, expected: &[&str]| {
        let node = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        let out = kubeadm_config(node.path(), "join", &config, &[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "a mismatch fails at once, not after retries"
        );
        for e in expected {
            assert!(err.contains(e), "stderr lacks {e:?}: {err}");
        }
        assert!(
            !node.path().join("etc/kubernetes/kubelet.conf").exists(),
            "nothing done after a failed discovery"
        );
        let call = calls(&node.path().join("var/lib/piha-test")).pop().unwrap();
        assert_eq!(call["outcome"].as_str().unwrap(), err.trim_end(), "the failure is on record");
    };
    let wrong_secret = lab_config("w1", port, Some(&[&pin])).replace(LAB_TOKEN, "abcdef.0123456789abcdee");
    mismatch(wrong_secret, &["DISCOVERY FAILED", "JWS MISMATCH", "jws-kubeconfig-abcdef"]);
    mismatch(
        lab_config("w1", port, Some(&[other])),
        &["DISCOVERY FAILED", "CA HASH MISMATCH", &pin, other],
    );
    // The right token and CA, but a name the serving certificate does not
    // carry (localhost reaches the same listener): the second, verified look fails.
    mismatch(
        lab_config("w1", port, Some(&[&pin])).replace(&format!("127.0.0.1:{port}"), &format!("localhost:{port}")),
        &["DISCOVERY FAILED", "TLS MISMATCH", "localhost", "hostname mismatch"],
    );

    // Nothing listening: retried, then given up with the reason.
    let out = kubeadm_config(
        tempfile::tempdir().unwrap().path(),
        "join",
        &lab_config("w1", free_port(), Some(&[&pin])),
        &[("PIHA_TEST_DISCOVERY_TIMEOUT", "2"), ("PIHA_TEST_DISCOVERY_INTERVAL", "1")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("trying again in 1 s") && text(&out).contains("could not get cluster-info within 2 s"),
        "{}",
        text(&out)
    );
}

/// The stand-in's JWS (standin.sh `jws_detached`) against the vectors of
/// Kubernetes' own tests (k8s.io/cluster-bootstrap token/jws jws_test.go,
/// ComputeDetachedSignature), and this file's HMAC-SHA256 against FIPS 180-2
/// and RFC 4231 so that it can vouch for the server's.
#[test]
fn jws_matches_kubernetes_test_vectors() {
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(&sha256(&[b'a'; 1000])),
        "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
    );
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let content = "Hello from the other side. I must have called a thousand times.";
    let vectors = [
        (content, "my voice is my passcode", "VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"),
        ("", "my voice is my passcode", "7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"),
        (
            content,
            "my voice is my passcode. my voice is my passcode",
            "SFoKn0-YxqnvpSExt4LuCZ_7pvIBdX3SoUO_NsTpkdg",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (payload, secret, sig) in vectors {
        let expected = format!("eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..{sig}");
        assert_eq!(jws(payload.as_bytes(), "joshua", secret), expected, "this file's JWS");
        let file = dir.path().join("payload");
        std::fs::write(&file, payload).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                ". '{}'; jws_detached joshua \"$1\" \"$2\"",
                overlay("test/usr/lib/piha/test/standin.sh").display()
            ))
            .args(["sh", secret])
            .arg(&file)
            .env("PATH", PATH)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "the stand-in's JWS");
    }
}

// ---- SHA-256, HMAC and base64url, written here so that the test does not
// ---- check openssl against itself (the workspace has no hmac crate, and
// ---- piha-agent's tests no sha2).

fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
        0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
        0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
        0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
        0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
        0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7].wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), v[0], v[1], v[2], v[3].wrapping_add(t1), v[4], v[5], v[6]];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    let mut out = [0u8; 32];
    for (i, word) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// RFC 2104 HMAC with SHA-256.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let mut inner = pad(0x36);
    inner.extend_from_slice(msg);
    let mut outer = pad(0x5c);
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const STANDARD: (&[u8; 64], bool) = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", true);
const URL_NO_PAD: (&[u8; 64], bool) = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", false);

/// RFC 4648 base64 with the given alphabet and padding.
fn base64(data: &[u8], (alphabet, pad): (&[u8; 64], bool)) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if pad {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

/// RFC 7515 compact JWS, HS256, protected header {"alg":"HS256","kid":ID},
/// payload detached: what Kubernetes' bootstrap signer writes into cluster-info.
fn jws(payload: &[u8], id: &str, secret: &str) -> String {
    let header = base64(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#).as_bytes(), URL_NO_PAD);
    let signing_input = format!("{header}.{}", base64(payload, URL_NO_PAD));
    format!(
        "{header}..{}",
        base64(&hmac_sha256(secret.as_bytes(), signing_input.as_bytes()), URL_NO_PAD)
    )
}

#[test]
fn the_apicheck_service_listens_on_the_port_keepalived_checks() {
    let service = std::fs::read_to_string(overlay("agent/usr/lib/systemd/system/piha-apicheck.service")).unwrap();
    let exec = service.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let port = piha_config::render::realserver::APICHECK_PORT;
    assert!(
        exec.contains(&format!(" TCP-LISTEN:{port},"))
            && exec.contains(" EXEC:/usr/lib/piha/apicheck'")
            && exec.contains("'/usr/lib/piha/apicheck poll & exec /usr/bin/socat "),
        "{exec}"
    );
    assert!(service.contains("\nEnvironmentFile=/etc/piha/vip.env\n"), "{service}");
    assert!(service.contains("\nRuntimeDirectory=piha-apicheck\n"), "{service}");
}

/// A throwaway cluster CA with a serving certificate it signed, and a second,
/// unrelated self-signed certificate; made with the openssl CLI at test time.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let steps: [&[&str]; 4] = [
            &[
                "req",
                "-x509",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=test-cluster-ca",
                "-days",
                "1",
            ],
            &[
                "req",
                "-keyout",
                "apiserver.key",
                "-out",
                "apiserver.csr",
                "-subj",
                "/CN=kube-apiserver",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "apiserver.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "apiserver.crt",
                "-days",
                "1",
            ],
            &[
                "req",
                "-x509",
                "-keyout",
                "other.key",
                "-out",
                "other.crt",
                "-subj",
                "/CN=kube-apiserver",
                "-days",
                "1",
            ],
        ];
        for args in steps {
            let mut cmd = Command::new("openssl");
            cmd.args(args).current_dir(dir.path());
            if args[0] == "req" {
                cmd.args(ec);
            }
            let out = cmd.output().expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// What listens on 127.0.0.1:6443 in the namespace.
enum Api<'a> {
    /// Nothing: the API server is not running.
    Down,
    /// `openssl s_server -www` with `<name>.crt`: answers every GET with 200.
    Serving(&'a str),
    /// An API server that is up but not ready: HTTP 500 over TLS with the CA's certificate.
    NotReady,
    /// Accepts the connection and never says a word.
    Silent,
}

/// Runs apicheck as piha-apicheck@.service would, with a keepalived-like
/// request on stdin, in a fresh network namespace whose lo holds the VIP or
/// not and whose 127.0.0.1:6443 holds `api`. Only loopback traffic, in the
/// namespace. Returns the answer (stdout) and stderr.
fn apicheck(pki: &Pki, vip_on_lo: bool, api: Api) -> (String, String) {
    let server = match api {
        Api::Down => String::new(),
        Api::Serving(name) => format!(
            "openssl s_server -quiet -www -accept 127.0.0.1:6443 -cert {dir}/{name}.crt -key {dir}/{name}.key >/dev/null 2>&1 &",
            dir = pki.dir.path().display()
        ),
        Api::NotReady => {
            let reply = pki.path("not-ready.sh");
            std::fs::write(
                &reply,
                "#!/bin/sh\nprintf 'HTTP/1.1 500 Internal Server Error\\r\\nContent-Length: 15\\r\\n\\r\\n[-]etcd failed\\n'\nsleep 0.2\n",
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&reply, std::fs::Permissions::from_mode(0o755)).unwrap();
            format!(
                "socat OPENSSL-LISTEN:6443,bind=127.0.0.1,reuseaddr,cert={dir}/apiserver.crt,key={dir}/apiserver.key,verify=0 EXEC:{reply} >/dev/null 2>&1 &",
                dir = pki.dir.path().display(),
                reply = reply.display()
            )
        }
        Api::Silent => "socat TCP-LISTEN:6443,bind=127.0.0.1,reuseaddr SYSTEM:'sleep 3' >/dev/null 2>&1 &".to_string(),
    };
    // The listener dies with the script (a server left running would keep its
    // namespace alive), and its output never holds the test's pipes open.
    let wait = if server.is_empty() {
        ""
    } else {
        "trap 'kill $! 2>/dev/null || true' EXIT\nfor _ in $(seq 50); do ss -ltn | grep -qF 127.0.0.1:6443 && break; sleep 0.1; done"
    };
    let script = format!(
        "ip link set lo up\n{vip}\n{server}\n{wait}\n\
         printf 'GET /ready HTTP/1.0\\r\\nUser-Agent: KeepAliveClient\\r\\nHost: 10.0.2.11:6444\\r\\n\\r\\n' | {check}",
        vip = if vip_on_lo { "ip addr add 10.0.2.100/32 dev lo" } else { "" },
        check = overlay("agent/usr/lib/piha/apicheck").display(),
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-euc", &script])
        .env("PATH", PATH)
        .env("VIP", "10.0.2.100")
        .env("API_PORT", "6443")
        .env("APICHECK_CA", pki.path("ca.crt"))
        .output()
        .expect("unshare runs");
    assert!(out.status.success(), "apicheck exits 0 after answering: {}", text(&out));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn apicheck_answers_200_only_with_the_vip_on_lo_and_a_ready_api_verified_by_the_ca() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for a network namespace");
        return;
    }
    let pki = Pki::new();
    let unavailable = |answer: &str, why: &str| {
        assert!(answer.starts_with("HTTP/1.0 503 Service Unavailable\r\n"), "{answer}");
        let body = answer.split_once("\r\n\r\n").expect("headers end").1;
        assert_eq!(body.lines().count(), 1, "one line: {answer}");
        assert!(body.starts_with("not ready: ") && body.contains(why), "{why}: {answer}");
    };

    let (ok, _) = apicheck(&pki, true, Api::Serving("apiserver"));
    assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
    assert!(ok.contains("\r\nConnection: close\r\n\r\nready: "), "{ok}");

    let (answer, log) = apicheck(&pki, false, Api::Serving("apiserver"));
    unavailable(&answer, "the VIP 10.0.2.100 is not on lo");
    assert!(log.contains("the VIP 10.0.2.100 is not on lo"), "the reason is logged: {log}");

    let (answer, _) = apicheck(&pki, true, Api::Down);
    unavailable(&answer, "the API server at 127.0.0.1:6443 refuses connections");

    let (answer, _) = apicheck(&pki, true, Api::Serving("other"));
    unavailable(&answer, "has a certificate that does not verify against");

    let (answer, _) = apicheck(&pki, true, Api::NotReady);
    unavailable(&answer, "answers /readyz with HTTP/1.1 500 Internal Server Error");

    let started = std::time::Instant::now();
    let (answer, _) = apicheck(&pki, true, Api::Silent);
    unavailable(&answer, "did not answer /readyz within 2 s");
    // keepalived gives the whole answer 3 s (connect_timeout); the namespace
    // setup and the listener's start come on top here.
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn apicheck_refuses_a_missing_vip_or_port_with_503() {
    // No namespace needed: it answers before looking at lo or the network.
    for (vip, port, why) in [
        ("", "6443", "VIP='' is not an IPv4 address"),
        ("10.0.2", "6443", "VIP='10.0.2' is not an IPv4 address"),
        ("10.0.2.100", "", "API_PORT='' is not a port"),
        ("10.0.2.100", "06443", "API_PORT='06443' is not a port"),
        ("10.0.2.100", "644300", "API_PORT='644300' is not a port"),
    ] {
        let out = Command::new("sh")
            .args([
                "-euc",
                &format!(
                    "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {}",
                    overlay("agent/usr/lib/piha/apicheck").display()
                ),
            ])
            .env("PATH", PATH)
            .env("VIP", vip)
            .env("API_PORT", port)
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", text(&out));
        assert!(answer.starts_with("HTTP/1.0 503 "), "{answer}");
        assert!(answer.contains(why), "{why}: {answer}");
    }
}

#[test]
fn apicheck_answers_from_the_pollers_verdict_and_fails_closed_when_it_goes_stale() {
    if !is_root() {
        eprintln!("SKIPPED: needs root for a network namespace");
        return;
    }
    let pki = Pki::new();
    let cache = tempfile::tempdir().unwrap();
    // In a fresh network namespace (loopback only): the poller against a
    // serving API, then against none, then a verdict nobody refreshes.
    let script = format!(
        r#"ip link set lo up
ip addr add 10.0.2.100/32 dev lo
ask() {{ printf 'GET /ready HTTP/1.0\r\n\r\n' | {check} | tail -n 1; }}
wait_verdict() {{ for _ in $(seq 100); do grep -q "$1" {cache}/verdict 2>/dev/null && return; sleep 0.1; done; echo "no verdict $1"; exit 1; }}
openssl s_server -quiet -www -accept 127.0.0.1:6443 -cert {dir}/apiserver.crt -key {dir}/apiserver.key >/dev/null 2>&1 &
api=$!
for _ in $(seq 50); do ss -ltn | grep -qF 127.0.0.1:6443 && break; sleep 0.1; done
{check} poll 2>{cache}/poll.log &
poller=$!
trap 'kill $api $poller 2>/dev/null || true' EXIT
wait_verdict ' ok$'
echo "serving: $(ask)"
kill $api
wait_verdict 'refuses connections'
echo "down: $(ask)"
kill $poller
read -r up _ </proc/uptime
echo "$((${{up%.*}} - 20)) ok" >{cache}/verdict
echo "stale: $(ask)"
"#,
        check = overlay("agent/usr/lib/piha/apicheck").display(),
        cache = cache.path().display(),
        dir = pki.dir.path().display(),
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-euc", &script])
        .env("PATH", PATH)
        .env("VIP", "10.0.2.100")
        .env("API_PORT", "6443")
        .env("APICHECK_CA", pki.path("ca.crt"))
        .env("APICHECK_CACHE", cache.path())
        .output()
        .expect("unshare runs");
    let stdout = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("serving: ready: the VIP 10.0.2.100 is on lo"), "{stdout}");
    assert!(
        stdout.contains("down: not ready: the API server at 127.0.0.1:6443 refuses connections"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stale: not ready: the API server was last checked 2") && stdout.contains("apicheck poll is stuck or gone"),
        "{stdout}"
    );
    let log = std::fs::read_to_string(cache.path().join("poll.log")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "apicheck: the API server is ready",
            "apicheck: not ready: the API server at 127.0.0.1:6443 refuses connections (not running)"
        ],
        "one line per change of verdict"
    );
}

/// `piha-agent certs`, the real binary, against the stand-in kubeadm on a
/// node root: an API server certificate 10 days from expiry is renewed for a
/// year through `kubeadm certs renew all`, the static pod manifests are back
/// in place afterwards, and the dates reach the card's status.json.
#[test]
fn certs_renews_a_certificate_due_within_30_days_through_kubeadm() {
    let root = tempfile::tempdir().unwrap();
    make_ca(root.path(), KeyKind::Ec);
    let out = kubeadm_config(root.path(), "init", &lab_config("cp1", free_port(), None), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let pki = root.path().join("etc/kubernetes/pki");
    // The stand-in's certificate, signed again to expire in 10 days.
    let csr = root.path().join("short.csr");
    for args in [
        vec![
            "x509",
            "-x509toreq",
            "-copy_extensions",
            "copyall",
            "-in",
            "apiserver.crt",
            "-signkey",
            "apiserver.key",
            "-out",
        ],
        vec![
            "x509",
            "-req",
            "-days",
            "10",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-copy_extensions",
            "copyall",
            "-out",
            "apiserver.crt",
            "-in",
        ],
    ] {
        let out = Command::new("openssl").args(args).arg(&csr).current_dir(&pki).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let card = tempfile::tempdir().unwrap();
    std::fs::write(
        card.path().join("status.json"),
        r#"{"schema":2,"phase":"done","updated":1,"boots":1}"#,
    )
    .unwrap();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = Command::new(env!("CARGO_BIN_EXE_piha-agent"))
        .args(["certs", "--root"])
        .arg(root.path())
        .arg("--config-dir")
        .arg(card.path())
        .env("PIHA_TEST_ROOT", root.path())
        .env("PATH", format!("{}:{PATH}", overlay("test/usr/local/bin").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("first to expire: apiserver on") && said.contains("renewed"), "{said}");
    // A year now: valid for 300 more days.
    let check = Command::new("openssl")
        .args(["x509", "-noout", "-checkend", &(300 * 86_400).to_string(), "-in"])
        .arg(pki.join("apiserver.crt"))
        .output()
        .unwrap();
    assert!(check.status.success(), "not renewed: {}", text(&check));
    // Still this cluster's, with the same names.
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(pki.join("ca.crt"))
        .arg(pki.join("apiserver.crt"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(sans(&pki.join("apiserver.crt")).contains(&"IP:10.0.2.100".to_string()));
    assert!(root.path().join("etc/kubernetes/manifests/kube-apiserver.yaml").exists());
    assert!(!root.path().join("etc/kubernetes/manifests.piha-parked").exists());
    let status: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(card.path().join("status.json")).unwrap()).unwrap();
    let c = &status["certificates"];
    assert_eq!(c["first"], "apiserver", "{status:#}");
    assert!(c["renewed"].as_u64().unwrap() >= started, "{status:#}");
    assert!(c["expires"].as_u64().unwrap() > started + 300 * 86_400, "{status:#}");
    let calls = calls(&root.path().join("var/lib/piha-test"));
    let argv: Vec<String> = calls.iter().map(|c| c["argv"].to_string()).collect();
    assert!(argv.iter().any(|a| a == r#"["certs","renew","all"]"#), "{argv:#?}");
}
