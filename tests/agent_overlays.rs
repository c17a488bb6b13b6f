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
        "test/usr/local/bin/kubeadm",
        "test/usr/local/bin/kubectl",
        "test/usr/lib/piha/test/collect",
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
    let script = format!(
        "ip link set lo up\nexport VIP=10.0.2.100\n{rs} up\n{rs} up\necho '-- up'\n{show}\n{rs} down\n{rs} down\necho '-- down'\n{show}",
        rs = rs.display()
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
    assert!(down.contains("all=0/0") && down.contains("lo=0/0"), "{output}");
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
    let root = tempfile::tempdir().unwrap();
    let kubeadm = overlay("test/usr/local/bin/kubeadm");
    let config = root.path().join("kubeadm.yaml");
    std::fs::write(&config, "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&kubeadm)
            .args(args)
            .env("PIHA_TEST_ROOT", root.path())
            .env("PATH", PATH)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run(&["version", "-o", "short"]).trim(), "v0.0.0-piha-test-recorder");
    run(&["init", "--config", config.to_str().unwrap()]);
    let k8s = root.path().join("etc/kubernetes");
    assert!(k8s.join("admin.conf").exists() && k8s.join("manifests/kube-apiserver.yaml").exists());
    std::fs::create_dir_all(k8s.join("pki")).unwrap();
    std::fs::write(k8s.join("pki/ca.key"), "key").unwrap();
    run(&["reset", "-f"]);
    assert!(
        !k8s.join("admin.conf").exists() && !k8s.join("pki/ca.key").exists(),
        "reset empties what init left, PKI included"
    );
    run(&["join", &format!("--config={}", config.display()), "--v", "say \"hi\"\\"]);

    let dir = root.path().join("var/lib/piha-test");
    let calls: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("kubeadm-calls.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[1]["n"], 2);
    assert_eq!(calls[1]["argv"], serde_json::json!(["init", "--config", config.to_str().unwrap()]));
    assert_eq!(calls[1]["config"], "kubeadm-2.yaml");
    assert!(calls[1]["uptime"].is_number());
    assert_eq!(calls[0]["config"], "");
    assert_eq!(calls[3]["argv"][3], "say \"hi\"\\", "arguments survive JSON quoting");
    assert_eq!(calls[3]["config"], "kubeadm-4.yaml");
    assert_eq!(
        std::fs::read_to_string(dir.join("kubeadm-2.yaml")).unwrap(),
        std::fs::read_to_string(&config).unwrap()
    );
    assert!(k8s.join("kubelet.conf").exists(), "join leaves kubelet.conf");
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
    for exe in ["usr/bin/piha-agent", "usr/bin/systemctl", "bin/true"] {
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
        "piha-apicheck.socket",
        "piha-apicheck@.service",
        "piha-fake-apiserver.socket",
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
            "disable piha-apicheck.socket",
            "disable keepalived.service",
            "disable kubelet.service"
        ]
    );
    // The test profile powers the VM off after the agent through a drop-in,
    // never through a unit that multi-user.target would wait for.
    let dropin = std::fs::read_to_string(overlay("test/usr/lib/systemd/system/piha-agent.service.d/50-piha-test.conf")).unwrap();
    assert!(dropin.contains("ExecStopPost=/usr/lib/piha/test/collect\n"), "{dropin}");
    assert!(dropin.contains("ExecStopPost=/usr/bin/systemctl --no-block poweroff\n"), "{dropin}");
    let agent = std::fs::read_to_string(overlay("agent/usr/lib/systemd/system/piha-agent.service")).unwrap();
    assert!(agent.contains("Type=exec\n") && !agent.contains("RemainAfterExit"), "{agent}");
    // The agent unit's mount must be the unit for its mount point.
    let mount = std::fs::read_to_string(overlay("agent/usr/lib/systemd/system/boot-piha.mount")).unwrap();
    assert!(mount.contains("Where=/boot/piha\n") && mount.contains("What=/dev/disk/by-label/PIHA-CFG\n"));
}

#[test]
fn the_apicheck_socket_listens_on_the_port_keepalived_checks() {
    let unit = std::fs::read_to_string(overlay("agent/usr/lib/systemd/system/piha-apicheck.socket")).unwrap();
    let listen: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("ListenStream=")).collect();
    assert_eq!(listen, ["6444"], "{unit}");
    assert_eq!(piha_config::render::realserver::APICHECK_PORT, 6444);
    assert!(unit.contains("\nAccept=yes\n"), "{unit}");
    let service = std::fs::read_to_string(overlay("agent/usr/lib/systemd/system/piha-apicheck@.service")).unwrap();
    assert!(service.contains("\nEnvironmentFile=/etc/piha/vip.env\n"), "{service}");
    assert!(
        service.contains("\nStandardInput=socket\n") && service.contains("\nStandardOutput=socket\n"),
        "{service}"
    );
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
    unavailable(&answer, "did not answer /readyz within 0.8 s");
    // keepalived gives the whole answer 1 s (connect_timeout); the namespace
    // setup and the listener's start come on top here.
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());
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
