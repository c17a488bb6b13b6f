//! Day two from the workstation, run as the real binary: `piha kubeconfig`
//! (checked by the real `openssl`, and used for mutual TLS against a real
//! TLS server that trusts the cluster CA) and `piha status --cluster` over
//! the system `ssh` (a node that cannot be reached is listed as such).

// Tests run the binaries under test and the host tools that check their
// output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn piha(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_piha"));
    c.env("PIHA_DATA_DIR", root()).args(args);
    c
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    text(&out)
}

fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should have failed: {}", text(&out));
    text(&out)
}

/// A copy of examples/qemu-lab.yaml with its secrets, in a temporary directory.
fn cluster_with_secrets() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    fs::copy(root().join("examples/qemu-lab.yaml"), &cluster).unwrap();
    ok(piha(&["init", "--cluster"]).arg(&cluster));
    (dir, cluster)
}

/// The kubeconfig's fields, decoded.
struct Kubeconfig {
    server: String,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn parse(path: &Path) -> Kubeconfig {
    let v: serde_json::Value = yaml_serde::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
    let current = v["current-context"].as_str().unwrap();
    let ctx = v["contexts"].as_array().unwrap().iter().find(|c| c["name"] == current).unwrap();
    assert_eq!(ctx["context"]["cluster"], "qemu-lab");
    let user = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == ctx["context"]["user"])
        .unwrap();
    Kubeconfig {
        server: v["clusters"][0]["cluster"]["server"].as_str().unwrap().to_string(),
        ca: b64(&v["clusters"][0]["cluster"]["certificate-authority-data"]),
        cert: b64(&user["user"]["client-certificate-data"]),
        key: b64(&user["user"]["client-key-data"]),
    }
}

fn openssl(args: &[&str], dir: &Path) -> String {
    ok(Command::new("openssl").args(args).current_dir(dir))
}

#[test]
fn kubeconfig_is_an_admin_of_this_cluster_signed_by_its_ca() {
    let (dir, cluster) = cluster_with_secrets();
    let said = ok(piha(&["kubeconfig", "--days", "7", "--cluster"]).arg(&cluster));
    let path = dir.path().join("qemu-lab.kubeconfig");
    assert!(
        said.contains(&path.display().to_string()) && said.contains("kubeadm:cluster-admins"),
        "{said}"
    );
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let k = parse(&path);
    assert_eq!(k.server, "https://10.0.2.100:6443");
    assert_eq!(k.ca, fs::read(dir.path().join("secrets/pki/ca.crt")).unwrap());

    let w = dir.path();
    fs::write(w.join("client.crt"), &k.cert).unwrap();
    fs::write(w.join("client.key"), &k.key).unwrap();
    assert!(openssl(&["verify", "-CAfile", "secrets/pki/ca.crt", "client.crt"], w).contains("client.crt: OK"));
    let info = openssl(
        &[
            "x509",
            "-in",
            "client.crt",
            "-noout",
            "-subject",
            "-enddate",
            "-ext",
            "extendedKeyUsage,basicConstraints",
        ],
        w,
    );
    assert!(
        info.contains("O = kubeadm:cluster-admins") && info.contains("CN = piha-admin@"),
        "{info}"
    );
    assert!(
        info.contains("TLS Web Client Authentication") && info.contains("CA:FALSE"),
        "{info}"
    );
    let end = info.lines().find_map(|l| l.strip_prefix("notAfter=")).unwrap().to_string();
    let days = ok(Command::new("date").args(["-u", "-d", &end, "+%s"]));
    let left = days.trim().parse::<i64>().unwrap()
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    assert!((6 * 86400..=7 * 86400 + 60).contains(&left), "{end}");
    // The key is the certificate's.
    let pubkey = |args: &[&str]| openssl(args, w);
    assert_eq!(
        pubkey(&["x509", "-in", "client.crt", "-noout", "-pubkey"]),
        pubkey(&["pkey", "-in", "client.key", "-pubout"])
    );

    // Mutual TLS with a server that requires a client certificate from the
    // cluster CA, as the API server does: accepted. One from a CA of another
    // cluster: refused.
    assert!(mtls(w, "client.crt", "client.key"), "the minted certificate was refused");
    let (other, other_cluster) = cluster_with_secrets();
    ok(piha(&["kubeconfig", "--out"])
        .arg(other.path().join("k"))
        .arg("--cluster")
        .arg(&other_cluster));
    let o = parse(&other.path().join("k"));
    fs::write(w.join("other.crt"), &o.cert).unwrap();
    fs::write(w.join("other.key"), &o.key).unwrap();
    assert!(!mtls(w, "other.crt", "other.key"), "a certificate of another CA was accepted");
}

/// `openssl s_server -Verify 1` (a client certificate is required and must
/// verify against the cluster CA) on loopback; whether `s_client` with this
/// certificate gets an answer.
fn mtls(w: &Path, cert: &str, key: &str) -> bool {
    // The server's own certificate, from the cluster CA.
    if !w.join("srv.crt").exists() {
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=kube-apiserver",
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
            ],
            w,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "srv.csr",
                "-CA",
                "secrets/pki/ca.crt",
                "-CAkey",
                "secrets/pki/ca.key",
                "-days",
                "1",
                "-out",
                "srv.crt",
            ],
            w,
        );
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-Verify",
            "1",
            "-verify_return_error",
            "-CAfile",
            "secrets/pki/ca.crt",
            "-cert",
            "srv.crt",
            "-key",
            "srv.key",
            "-accept",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(w)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-CAfile",
            "secrets/pki/ca.crt",
            "-cert",
            cert,
            "-key",
            key,
            "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(w)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    client.stdin.take().unwrap().write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let out = client.wait_with_output().unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("200 ok")
}

#[test]
fn kubeconfig_refuses_missing_or_foreign_secrets_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    fs::copy(root().join("examples/qemu-lab.yaml"), &cluster).unwrap();
    let err = fails(piha(&["kubeconfig", "--cluster"]).arg(&cluster));
    assert!(err.contains("piha init --cluster"), "{err}");
    assert!(!dir.path().join("qemu-lab.kubeconfig").exists());

    // Secrets of another cluster (another name).
    let (other, other_cluster) = cluster_with_secrets();
    let renamed = fs::read_to_string(&other_cluster)
        .unwrap()
        .replace("name: qemu-lab", "name: garage");
    fs::write(dir.path().join("garage.yaml"), renamed).unwrap();
    let err = fails(
        piha(&["kubeconfig", "--secrets"])
            .arg(other.path().join("secrets"))
            .arg("--cluster")
            .arg(dir.path().join("garage.yaml")),
    );
    assert!(
        err.contains("holds the secrets of cluster `qemu-lab`") && err.contains("garage"),
        "{err}"
    );
    assert!(!dir.path().join("garage.kubeconfig").exists());

    // A CA certificate that is not the one the cards pin.
    fs::write(other.path().join("secrets/ca-cert-hash"), format!("sha256:{}\n", "00".repeat(32))).unwrap();
    let err = fails(piha(&["kubeconfig", "--cluster"]).arg(&other_cluster));
    assert!(err.contains("ca-cert-hash") && err.contains("fix:"), "{err}");
    assert!(!other.path().join("qemu-lab.kubeconfig").exists());
}

/// Nodes that nobody answers for: every node is listed, each unreachable
/// with ssh's reason, and the command itself succeeds. piha runs inside a
/// network namespace of its own with no route at all, so ssh fails at once
/// ("Network is unreachable") and no packet leaves the host.
#[test]
fn status_cluster_lists_every_node_unreachable_ones_too() {
    let (_dir, cluster) = cluster_with_secrets();
    let ns = Netns::new();
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_piha")])
            .env("PIHA_DATA_DIR", root())
            .args(args)
            .arg(&cluster);
        c
    };
    let out = in_ns(&["status", "--json", "--cluster"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["lb1", "lb2", "cp1", "cp2", "cp3", "w1"]);
    for r in rows {
        assert_eq!(r["reachable"], false, "{r}");
        assert!(r["unreachable"].as_str().unwrap().contains("Network is unreachable"), "{r}");
    }
    let table = ok(&mut in_ns(&["status", "--cluster"]));
    assert!(table.contains("NODE") && table.matches("unreachable: ").count() == 6, "{table}");

    let err = fails(&mut piha(&["status", "--watch"]));
    assert!(err.contains("--cluster"), "{err}");
}

/// A network namespace with nothing in it (lo down, no route), deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("piha-day2-{}", std::process::id());
        ok(Command::new("ip").args(["netns", "add", &name]));
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}
