//! The `examples/qemu-lab.yaml` cluster as the QEMU boot tests use it: take
//! the board's shared image (`super::shared`), stamp copies per node, boot them
//! until the test overlay powers them off, and read back what the node
//! recorded (`status.json` via `piha status`, `piha-test/observed.env` on
//! PIHA-CFG, the recording kubeadm's calls in the root filesystem). A node
//! that joins on its own gets the test overlay's stand-in API server, run on
//! the host (`ApiServer`), behind the VIP (`api_forward`). The
//! assertions every board must pass live here too, so amd64 and arm64 prove
//! the same outcomes with the same code.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::image::{copy_sparse, ext4_exists, ext4_read, extract, fat_list, fat_read};
use super::qemu::{Boot, BootResult, boot};
use super::shared::shared_build;
use super::{piha, repo, run_ok};

/// `examples/qemu-lab.yaml`'s API VIP, and the endpoint VIP:port the nodes use.
pub const VIP: &str = "10.0.2.100";
pub const API_ENDPOINT: &str = "10.0.2.100:6443";

/// A `piha init`-ed copy of `examples/qemu-lab.yaml` and the shared image of its board.
pub struct Lab {
    /// `target/piha-lab/BOARD`: the cluster file, its secrets and every
    /// stamped copy with its console log.
    pub dir: PathBuf,
    pub cluster: PathBuf,
    /// The shared build's image: read and copied, never written.
    pub image: PathBuf,
}

impl Lab {
    /// The shared `board` image (`super::shared`, built once per test run
    /// from `examples/qemu-lab.yaml` by the printed offline route) and a
    /// `piha init`-ed copy of `examples/qemu-lab.yaml` with every
    /// `board: amd64` node on `board` and each `(from, to)` of `edits`
    /// replaced, for stamping. Edits change only what goes onto a card (the
    /// image is the same for every node of a board), so no edit rebuilds.
    ///
    /// The copy, its secrets and every stamped image go to
    /// `target/piha-lab/BOARD`, emptied first: a Lab lives in a static, which
    /// is never dropped, so a temporary directory would leak gigabytes of
    /// images per run; this way each run reclaims the last one's space, and a
    /// failed run's console logs and images stay there to be read.
    pub fn new(board: &str, edits: &[(&str, &str)]) -> Lab {
        let image = shared_build(board).image.clone();
        let dir = repo().join("target/piha-lab").join(board);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing the last run's {}: {e}", dir.display()),
        }
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let cluster = dir.join("cluster.yaml");
        let example = repo().join("examples/qemu-lab.yaml");
        let mut text = std::fs::read_to_string(&example).expect("read examples/qemu-lab.yaml");
        text = text.replace("board: amd64", &format!("board: {board}"));
        for (from, to) in edits {
            assert!(
                text.contains(from),
                "examples/qemu-lab.yaml no longer holds `{from}`: update this test's edits"
            );
            text = text.replace(from, to);
        }
        std::fs::write(&cluster, text).expect("write cluster file");
        run_ok(piha().arg("init").arg("--cluster").arg(&cluster));
        Lab { dir, cluster, image }
    }

    /// A fresh copy of the built image stamped for `node`.
    pub fn stamped(&self, node: &str) -> PathBuf {
        let img = self.dir.join(format!("{node}.img"));
        copy_sparse(&self.image, &img);
        run_ok(
            piha()
                .arg("stamp")
                .arg("--cluster")
                .arg(&self.cluster)
                .arg("--node")
                .arg(node)
                .arg(&img),
        );
        img
    }

    /// A file of the cluster's secrets directory (`bootstrap-token`, `ca-cert-hash`), trimmed.
    pub fn secret(&self, name: &str) -> String {
        let path = self.dir.join("secrets").join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    }
}

/// The node whose rendered kubeadm.yaml the host's stand-in API server is set
/// up from: `examples/qemu-lab.yaml`'s init control plane.
const INIT_NODE: &str = "cp1";

/// The stand-in API server the test images run
/// (`overlays/test/usr/lib/piha/test/apiserver`, the same script), run on the
/// host for a single-VM boot whose node joins: HTTPS on 127.0.0.1:`port` with
/// a serving certificate signed by the lab's cluster CA (its SANs include the
/// VIP, the controlPlaneEndpoint), `/readyz`, and `cluster-info` signed with
/// the lab's bootstrap token, so the joining stand-in kubeadm's token
/// discovery through `api_forward(port)` is real. Its root (the CA, the
/// rendered config, the request log) is a temporary directory in the lab's
/// directory; dropping the handle stops the server's whole process group
/// (socat and its forked handlers) and removes the root.
pub struct ApiServer {
    pub port: u16,
    server: Child,
    root: TempDir,
}

impl Lab {
    /// Sets up and starts the host's stand-in API server for this lab: the
    /// lab's `pki/ca.crt` and `ca.key` under `ROOT/etc/kubernetes/pki`, the
    /// init control plane's kubeadm.yaml from `piha render` with only its
    /// `bindPort` changed to a free port, `apiserver setup` on that, then
    /// `apiserver serve` bound to 127.0.0.1. Returns once the port accepts
    /// connections.
    pub fn api_server(&self) -> ApiServer {
        let root = tempfile::Builder::new()
            .prefix("api-server-")
            .tempdir_in(&self.dir)
            .expect("tempdir");
        let pki = root.path().join("etc/kubernetes/pki");
        std::fs::create_dir_all(&pki).unwrap_or_else(|e| panic!("creating {}: {e}", pki.display()));
        for file in ["ca.crt", "ca.key"] {
            let from = self.dir.join("secrets/pki").join(file);
            std::fs::copy(&from, pki.join(file)).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
        }

        let rendered = root.path().join("render");
        run_ok(
            piha()
                .arg("render")
                .arg("--cluster")
                .arg(&self.cluster)
                .arg("--node")
                .arg(INIT_NODE)
                .arg("--out")
                .arg(&rendered),
        );
        let kubeadm = rendered.join("etc/piha/kubeadm.yaml");
        let text = std::fs::read_to_string(&kubeadm).unwrap_or_else(|e| panic!("{}: {e}", kubeadm.display()));
        let bind = format!("bindPort: {}", API_ENDPOINT.rsplit_once(':').expect("VIP:port").1);
        assert_eq!(
            text.matches(&bind).count(),
            1,
            "{INIT_NODE}'s rendered kubeadm.yaml should hold `{bind}` once:\n{text}"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        let config = root.path().join("kubeadm.yaml");
        std::fs::write(&config, text.replace(&bind, &format!("bindPort: {port}"))).expect("write kubeadm.yaml");

        let script = repo().join("overlays/test/usr/lib/piha/test/apiserver");
        run_ok(Command::new(&script).arg("setup").arg(&config).env("PIHA_TEST_ROOT", root.path()));
        let log = root.path().join("serve.log");
        let stderr = std::fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let server = Command::new(&script)
            .arg("serve")
            .env("PIHA_TEST_ROOT", root.path())
            .env("PIHA_TEST_BIND", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} serve: {e}", script.display()));
        let mut api = ApiServer { port, server, root };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = api.server.try_wait() {
                panic!("the stand-in API server exited ({status}): {}", api.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the stand-in API server never listened on 127.0.0.1:{port}: {}",
                api.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        api
    }
}

impl ApiServer {
    /// What the server answered, one line per request (time, peer, method,
    /// path, status), then its own stderr (socat's errors, TLS handshakes
    /// that failed): for failure messages.
    pub fn log(&self) -> String {
        let read = |rel: &str| std::fs::read_to_string(self.root.path().join(rel)).unwrap_or_default();
        format!(
            "requests:\n{}stderr:\n{}",
            read("var/lib/piha-test/apiserver-requests.log"),
            read("serve.log")
        )
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // The server is its process group's leader (`process_group(0)`).
        let _ = Command::new("kill").arg("--").arg(format!("-{}", self.server.id())).status();
        let _ = self.server.wait();
    }
}

/// The `guestfwd` option that sends the guest's connections to VIP:6443 to
/// 127.0.0.1:`port` on the host. Through `cmd:`, which QEMU spawns once per
/// connection: a chardev target (`-tcp:127.0.0.1:PORT`) is one host
/// connection opened at QEMU's start and never reopened, so it would carry
/// only the first of the several connections a join makes (the agent's TCP
/// probes, then discovery's untrusted and verified TLS fetches). socat's
/// stdin and stdout are that connection, and so is its stderr, hence `-lf`.
pub fn api_forward(port: u16) -> String {
    format!("guestfwd=tcp:{API_ENDPOINT}-cmd:socat -lf /dev/null STDIO TCP:127.0.0.1:{port}")
}

/// Boots `b` and requires the guest to power itself off (the test overlay
/// does once the agent is done); prints the wall time.
pub fn boot_until_poweroff(b: &Boot, name: &str) -> BootResult {
    let r = boot(b, None);
    eprintln!("{name}: powered off {} after {:?}", r.powered_off, r.elapsed);
    assert!(
        r.powered_off,
        "{name} did not power off within {:?}; console tail:\n{}",
        b.timeout,
        tail(&r.console)
    );
    r
}

/// The last 60 lines of a console log.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// `piha status --json IMAGE`.
pub fn status(img: &Path) -> Value {
    serde_json::from_str(&run_ok(piha().arg("status").arg("--json").arg(img))).expect("status.json")
}

/// `piha-test/observed.env` from the card: what the node looked like when the agent finished.
pub fn observed(img: &Path) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = extract(img, 2, dir.path());
    let text = fat_read(&cfg, "piha-test/observed.env").expect("piha-test/observed.env on PIHA-CFG");
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// The root filesystem (partition 3) of `img`, copied into `dir`.
pub fn root_fs(img: &Path, dir: &Path) -> PathBuf {
    extract(img, 3, dir)
}

/// Every recorded kubeadm call (from the root filesystem).
pub fn kubeadm_calls(root: &Path) -> Vec<Value> {
    let text = ext4_read(root, "/var/lib/piha-test/kubeadm-calls.jsonl").unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .map(|l| serde_json::from_str(l).expect("kubeadm call line"))
        .collect()
}

/// A recorded call's arguments.
pub fn argv(call: &Value) -> Vec<String> {
    call["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .map(|a| a.as_str().expect("arg").to_string())
        .collect()
}

/// The recorded calls whose subcommand is `verb` (`init`, `join`, `reset`).
pub fn calls_of<'a>(calls: &'a [Value], verb: &str) -> Vec<&'a Value> {
    calls.iter().filter(|c| argv(c).first().map(String::as_str) == Some(verb)).collect()
}

/// The copy of the `--config` file the recording kubeadm kept for `call`.
pub fn recorded_config(root: &Path, call: &Value) -> String {
    let name = call["config"].as_str().expect("config copy");
    let config = ext4_read(root, &format!("/var/lib/piha-test/{name}")).expect("config");
    String::from_utf8_lossy(&config).into_owned()
}

/// Whether `observed.env`'s `lo_addresses` holds the VIP as a /32.
pub fn vip_on_lo(o: &BTreeMap<String, String>) -> bool {
    o["lo_addresses"].split(' ').any(|a| a == format!("{VIP}/32"))
}

pub fn assert_console_shows_boot(r: &BootResult, node: &str) {
    assert!(r.console.contains("Linux version"), "{node}: no kernel on the console");
    assert!(
        r.console.contains("Reached target") && r.console.contains("Multi-User System"),
        "{node}: systemd never reported reaching multi-user.target:\n{}",
        tail(&r.console)
    );
    // systemd shortens descriptions on the console; the unit name and the
    // agent's own log lines (piha-agent[PID]: ...) are what is always there.
    assert!(
        r.console.contains("piha-agent.servic") && r.console.contains("piha-agent["),
        "{node}: the agent unit never started:\n{}",
        tail(&r.console)
    );
}

/// The boot finished (multi-user.target reached, no job left) before the
/// test overlay recorded the node and powered it off.
pub fn assert_booted(img: &Path, node: &str) {
    let o = observed(img);
    assert!(
        matches!(o.get("system_state").map(String::as_str), Some("running" | "degraded")),
        "{node}: systemd did not finish booting: {o:?}"
    );
}

pub fn assert_done(img: &Path, node: &str, role: &str) -> Value {
    let s = status(img);
    assert_eq!(s["phase"], "done", "{node}: {s:#}");
    assert_eq!(s["node"], node);
    assert_eq!(s["role"], role);
    for step in s["steps"].as_array().expect("steps") {
        assert_ne!(step["outcome"], "failed", "{node}: {step:#}");
    }
    s
}

/// After the agent stopped: no `secrets/` on PIHA-CFG, nothing of them left
/// in its raw bytes (no `PRIVATE KEY`, no token, no line of any key's
/// base64), and the token in no file of the node (`token_files`, which the
/// test profile's collect script fills in the VM).
pub fn assert_secrets_gone(lab: &Lab, img: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = extract(img, 2, dir.path());
    assert!(fat_read(&cfg, "node.yaml").is_some(), "node.yaml must stay");
    let files = fat_list(&cfg);
    assert!(
        !files.iter().any(|f| f.starts_with("secrets")),
        "secrets left on PIHA-CFG: {files:?}"
    );
    assert_no_secret_bytes(lab, &std::fs::read(&cfg).expect("PIHA-CFG"), "the raw PIHA-CFG partition");
    let o = observed(img);
    if o.get("token_checked").map(String::as_str) == Some("1") {
        assert_eq!(o["token_files"], "", "files on the node still holding the bootstrap token");
    }
}

/// `bytes` hold none of the lab's secrets: no PEM private key header, not
/// the bootstrap token nor its secret half, no base64 line of any key file.
pub fn assert_no_secret_bytes(lab: &Lab, bytes: &[u8], what: &str) {
    let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!found(b"PRIVATE KEY"), "{what} holds `PRIVATE KEY`");
    let token = lab.secret("bootstrap-token");
    assert!(!found(token.as_bytes()), "{what} holds the bootstrap token");
    let secret_half = token.split_once('.').expect("token").1;
    assert!(!found(secret_half.as_bytes()), "{what} holds the token's secret");
    for key in ["ca.key", "sa.key", "front-proxy-ca.key", "etcd/ca.key"] {
        let pem = std::fs::read_to_string(lab.dir.join("secrets/pki").join(key)).expect("key file");
        for line in pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 32) {
            assert!(!found(line.as_bytes()), "{what} holds a line of {key}'s base64");
        }
    }
}

/// What a first boot of the init control plane `node` (address `cidr`) must
/// leave: the agent done once, secrets scrubbed, identity applied, the VIP on
/// `lo` as an LVS-DR real server, containerd running, and exactly one
/// `kubeadm init` with the expected config and the CAs from the card.
pub fn assert_init_control_plane(lab: &Lab, img: &Path, r: &BootResult, node: &str, cidr: &str) {
    assert_console_shows_boot(r, node);
    assert_booted(img, node);
    let s = assert_done(img, node, "control-plane");
    assert_eq!(s["boots"], 1);
    assert_secrets_gone(lab, img);

    let o = observed(img);
    assert_eq!(o["hostname"], node);
    assert!(o["addresses"].contains(cidr), "static IP not applied: {o:?}");
    assert!(vip_on_lo(&o), "VIP not on lo: {o:?}");
    for key in ["arp_ignore.all", "arp_ignore.lo"] {
        assert_eq!(o[key], "1", "{key}: {o:?}");
    }
    for key in ["arp_announce.all", "arp_announce.lo"] {
        assert_eq!(o[key], "2", "{key}: {o:?}");
    }
    assert_eq!(o["active.piha-realserver.service"], "active");
    assert_eq!(o["active.containerd.service"], "active", "the real containerd must run: {o:?}");
    assert_eq!(o["swaps"], "0");

    let dir = tempfile::tempdir().expect("tempdir");
    let root = root_fs(img, dir.path());
    let calls = kubeadm_calls(&root);
    let inits = calls_of(&calls, "init");
    assert_eq!(inits.len(), 1, "{calls:?}");
    let args = argv(inits[0]);
    assert!(args.contains(&"--config".to_string()), "{args:?}");
    assert!(!args.iter().any(|a| a.contains("upload-certs")), "{args:?}");
    let config = recorded_config(&root, inits[0]);
    for want in [
        "kind: InitConfiguration",
        "kind: ClusterConfiguration",
        &format!("controlPlaneEndpoint: {API_ENDPOINT}"),
        "cgroupDriver: systemd",
        "unix:///var/run/containerd/containerd.sock",
    ] {
        assert!(config.contains(want), "init config lacks {want}:\n{config}");
    }
    assert!(!config.contains("certificateKey"), "{config}");
    assert!(ext4_exists(&root, "/etc/kubernetes/pki/ca.key"), "CA not placed");
    assert_eq!(
        String::from_utf8_lossy(&ext4_read(&root, "/etc/hostname").expect("hostname")).trim(),
        node
    );
}

/// A second boot of an initialised control plane: identity and report only,
/// kubeadm not run again, the VIP back on `lo`.
pub fn assert_second_boot(img: &Path, r: &BootResult, node: &str) {
    assert_console_shows_boot(r, &format!("{node} (second boot)"));
    let s = assert_done(img, node, "control-plane");
    assert_eq!(s["boots"], 2, "{s:#}");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = root_fs(img, dir.path());
    let calls = kubeadm_calls(&root);
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(argv(c).first().map(String::as_str), Some("init" | "join" | "reset")))
            .count(),
        1,
        "kubeadm ran again on the second boot: {calls:?}"
    );
    let o = observed(img);
    assert!(vip_on_lo(&o), "VIP not back on lo after reboot: {o:?}");
}

/// What a worker's first boot must leave: done, secrets scrubbed, its static
/// address (`ifname=cidr` as observed.env lists it), never the VIP nor the CA
/// key, and one `kubeadm join` that succeeded (the stand-in's token discovery
/// included), with the bootstrap token and the CA hash and no control-plane
/// section.
pub fn assert_worker_joined(lab: &Lab, img: &Path, r: &BootResult, node: &str, address: &str) {
    assert_console_shows_boot(r, node);
    assert_booted(img, node);
    assert_done(img, node, "worker");
    assert_secrets_gone(lab, img);

    let o = observed(img);
    assert_eq!(o["hostname"], node);
    assert!(o["addresses"].split(' ').any(|a| a == address), "{address} not applied: {o:?}");
    assert!(!o["lo_addresses"].contains(VIP), "a worker got the VIP: {o:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let root = root_fs(img, dir.path());
    let calls = kubeadm_calls(&root);
    let joins = calls_of(&calls, "join");
    assert_eq!(joins.len(), 1, "{calls:?}");
    // The stand-in's token discovery (JWS and CA hash) succeeded.
    assert_eq!(joins[0]["outcome"], "ok", "{node}: kubeadm join failed: {:#}", joins[0]);
    let config = recorded_config(&root, joins[0]);
    let token = lab.secret("bootstrap-token");
    let hash = lab.secret("ca-cert-hash");
    assert!(
        config.contains(&token) && config.contains(&hash),
        "join config lacks the token or the CA hash:\n{config}"
    );
    assert!(!config.contains("controlPlane:"), "worker join with controlPlane:\n{config}");
    assert!(
        !ext4_exists(&root, "/etc/kubernetes/pki/ca.key"),
        "a worker must never hold the CA key"
    );
}

/// `piha build --board BOARD --distro debian-bookworm --profile test` for
/// `cluster` into `out`: for builds piha must refuse (the images the tests
/// use come from `super::shared`).
pub fn test_build(board: &str, cluster: &Path, out: &Path) -> std::process::Command {
    let mut cmd = piha();
    cmd.args([
        "build",
        "--board",
        board,
        "--distro",
        "debian-bookworm",
        "--profile",
        "test",
        "--cluster",
    ])
    .arg(cluster)
    .arg("--out")
    .arg(out);
    cmd
}
