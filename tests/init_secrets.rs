//! `piha init` and `piha rotate-secrets`, run as the real binary, with the
//! generated PKI checked by the real `openssl`: the discovery hash equals the
//! one the kubeadm docs compute, the CAs are CAs, keys match their
//! certificates, and the directory is private, complete and never overwritten.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use piha::card::secrets::Secrets;
use piha_config::secrets;
use piha_runner::{Cmd, Runner, SystemRunner};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("builder/ has a parent")
        .to_path_buf()
}

fn piha(args: &[&str], cluster: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_piha"))
        .env("PIHA_DATA_DIR", root())
        .args(args)
        .arg("--cluster")
        .arg(cluster)
        .output()
        .expect("running piha")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A temporary directory holding a copy of an example cluster file.
fn with_example(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    fs::copy(root().join(format!("examples/{name}.yaml")), &cluster).expect("copy example");
    (dir, cluster)
}

fn init(cluster: &Path) -> PathBuf {
    let out = piha(&["init"], cluster);
    assert!(out.status.success(), "piha init failed: {}", text(&out));
    cluster.parent().unwrap().join("secrets")
}

fn run(cmd: Cmd) -> Vec<u8> {
    let line = cmd.display();
    SystemRunner.run(&cmd).unwrap_or_else(|e| panic!("{line}: {e}")).stdout
}

fn openssl(args: &[&str]) -> String {
    String::from_utf8(run(Cmd::new("openssl").args(args))).expect("openssl output is text")
}

/// The kubeadm docs' command:
/// `openssl x509 -pubkey -noout -in ca.crt | openssl pkey -pubin -outform der | sha256sum`.
fn hash_by_openssl(ca: &Path) -> String {
    let pubkey = run(Cmd::new("openssl").args(["x509", "-pubkey", "-noout", "-in"]).arg(ca));
    let der = run(Cmd::new("openssl").args(["pkey", "-pubin", "-outform", "der"]).stdin(pubkey));
    let sum = String::from_utf8(run(Cmd::new("sha256sum").stdin(der))).unwrap();
    format!("sha256:{}", sum.split_whitespace().next().expect("sha256sum output"))
}

/// Every path under `dir` (relative) with its mode and, for files, its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, (mode, None));
                walk(base, &path, out);
            } else {
                out.insert(rel, (mode, Some(fs::read(&path).expect("read"))));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_private(secrets_dir: &Path) {
    assert_eq!(fs::metadata(secrets_dir).unwrap().permissions().mode() & 0o7777, 0o700);
    let snap = snapshot(secrets_dir);
    for (rel, (mode, bytes)) in &snap {
        let want = if bytes.is_some() { 0o600 } else { 0o700 };
        assert_eq!(*mode, want, "{} has mode {mode:o}", rel.display());
    }
    for f in secrets::ALL {
        assert!(snap.contains_key(Path::new(f.rel)), "missing {}", f.rel);
    }
}

/// What openssl says about each CA and the keys, for either algorithm.
fn check_pki(secrets_dir: &Path, key_text: &str) {
    let pki = secrets_dir.join("pki");
    for (crt, key, cn) in [
        ("ca.crt", "ca.key", "kubernetes"),
        ("etcd/ca.crt", "etcd/ca.key", "etcd-ca"),
        ("front-proxy-ca.crt", "front-proxy-ca.key", "front-proxy-ca"),
    ] {
        let crt = pki.join(crt);
        let key = pki.join(key);
        let crt_s = crt.to_str().unwrap();
        let info = openssl(&["x509", "-noout", "-text", "-in", crt_s]);
        assert!(info.contains("CA:TRUE"), "{info}");
        assert!(info.contains("Certificate Sign") && info.contains("CRL Sign"), "{info}");
        assert!(
            info.contains(&format!("Subject: CN = {cn}")) && info.contains(&format!("Issuer: CN = {cn}")),
            "{info}"
        );
        let verify = openssl(&["verify", "-CAfile", crt_s, crt_s]);
        assert_eq!(verify.trim(), format!("{crt_s}: OK"));
        // Still valid nine years from now (kubeadm's CAs last ten).
        openssl(&["x509", "-noout", "-checkend", &(9 * 365 * 86400).to_string(), "-in", crt_s]);
        // The key is the certificate's.
        let cert_pub = openssl(&["x509", "-noout", "-pubkey", "-in", crt_s]);
        let key_pub = openssl(&["pkey", "-pubout", "-in", key.to_str().unwrap()]);
        assert_eq!(cert_pub, key_pub, "{} does not match {crt_s}", key.display());
        let key_info = openssl(&["pkey", "-noout", "-text", "-in", key.to_str().unwrap()]);
        assert!(key_info.contains(key_text), "{key_info}");
    }
    // sa.key and sa.pub are one pair; sa.pub is a PKIX public key.
    let sa_pub = fs::read_to_string(pki.join("sa.pub")).unwrap();
    assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"), "{sa_pub}");
    assert_eq!(openssl(&["pkey", "-pubout", "-in", pki.join("sa.key").to_str().unwrap()]), sa_pub);
    assert!(openssl(&["pkey", "-noout", "-text", "-in", pki.join("sa.key").to_str().unwrap()]).contains(key_text));

    let hash = fs::read_to_string(secrets_dir.join("ca-cert-hash")).unwrap();
    assert_eq!(hash.trim(), hash_by_openssl(&pki.join("ca.crt")));
    let token = fs::read_to_string(secrets_dir.join("bootstrap-token")).unwrap();
    assert!(piha::card::pki::is_bootstrap_token(token.trim()), "{token}");

    let s = Secrets::load(secrets_dir).expect("Secrets::load");
    assert_eq!(s.ca_cert_hash().unwrap(), hash.trim());
    assert_eq!(s.token().unwrap(), token.trim());
    assert_eq!(s.read(secrets::SA_PUB).unwrap(), sa_pub.as_bytes());
}

#[test]
fn rsa_pki_is_what_kubeadm_would_make() {
    let (_tmp, cluster) = with_example("homelab");
    let dir = init(&cluster);
    assert_private(&dir);
    check_pki(&dir, "Private-Key: (2048 bit");
    assert_eq!(Secrets::load(&dir).unwrap().cluster_name(), "homelab");
}

#[test]
fn ecdsa_pki_is_what_kubeadm_would_make() {
    let (_tmp, cluster) = with_example("qemu-lab");
    let dir = init(&cluster);
    assert_private(&dir);
    check_pki(&dir, "ASN1 OID: prime256v1");
}

#[test]
fn second_init_changes_nothing_and_rotate_needs_yes() {
    let (tmp, cluster) = with_example("qemu-lab");
    let dir = init(&cluster);
    let before = snapshot(tmp.path());

    let out = piha(&["init"], &cluster);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing changed"), "{}", text(&out));
    assert_eq!(snapshot(tmp.path()), before, "a second piha init changed files");

    let out = piha(&["rotate-secrets"], &cluster);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("without --yes") && msg.contains("re-stamped"), "{msg}");
    assert_eq!(snapshot(tmp.path()), before, "rotate-secrets without --yes changed files");

    let old_hash = Secrets::load(&dir).unwrap().ca_cert_hash().unwrap();
    let out = piha(&["rotate-secrets", "--yes"], &cluster);
    assert!(out.status.success(), "{}", text(&out));
    // It says plainly what it leaves as it was.
    let said = text(&out);
    assert!(
        said.contains("does NOT revoke") && said.contains("kubeadm token delete") && said.contains("every card"),
        "{said}"
    );
    assert_private(&dir);
    assert_ne!(Secrets::load(&dir).unwrap().ca_cert_hash().unwrap(), old_hash);
    let olds: Vec<PathBuf> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("secrets.old-"))
        .collect();
    assert_eq!(olds.len(), 1, "{olds:?}");
    assert_eq!(
        Secrets::load(&olds[0]).unwrap().ca_cert_hash().unwrap(),
        old_hash,
        "the old secrets were not kept"
    );
    // No temporary directory is left behind.
    let names: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn invalid_cluster_file_writes_nothing() {
    let (tmp, cluster) = with_example("qemu-lab");
    let text_before = fs::read_to_string(&cluster).unwrap();
    let broken = text_before.replace("ip: 10.0.2.12", "ip: 10.0.2.11");
    fs::write(&cluster, &broken).unwrap();
    let before = snapshot(tmp.path());
    let out = piha(&["init"], &cluster);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("nodes[3].ip: 10.0.2.11 is also the address of nodes[2] (cp1)") && msg.contains("nothing was written"),
        "{msg}"
    );
    assert_eq!(snapshot(tmp.path()), before);
    assert!(!tmp.path().join("secrets").exists());
}

#[test]
fn init_without_a_cluster_file_writes_the_example_then_the_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = tmp.path().join("cluster.yaml");
    let dir = init(&cluster);
    assert_eq!(
        fs::read_to_string(&cluster).unwrap(),
        fs::read_to_string(root().join("examples/homelab.yaml")).unwrap()
    );
    assert_private(&dir);
}

#[test]
fn refuses_other_clusters_and_incomplete_directories() {
    let (tmp, cluster) = with_example("qemu-lab");
    let dir = init(&cluster);

    let original = fs::read_to_string(&cluster).unwrap();
    fs::write(&cluster, original.replace("name: qemu-lab", "name: other-lab")).unwrap();
    let before = snapshot(tmp.path());
    let out = piha(&["init"], &cluster);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("holds the secrets of cluster `qemu-lab`, but"),
        "{}",
        text(&out)
    );
    assert_eq!(snapshot(tmp.path()), before);

    fs::write(&cluster, original).unwrap();
    fs::remove_file(dir.join("pki/sa.pub")).unwrap();
    let before = snapshot(tmp.path());
    let out = piha(&["init"], &cluster);
    assert!(!out.status.success());
    assert!(text(&out).contains("is incomplete, missing pki/sa.pub"), "{}", text(&out));
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn an_empty_secrets_directory_is_filled_and_a_missing_one_explained() {
    let (tmp, cluster) = with_example("qemu-lab");
    let custom = tmp.path().join("vault");
    let err = Secrets::load(&custom).unwrap_err().to_string();
    assert!(err.contains("piha init"), "{err}");
    fs::create_dir(&custom).unwrap();
    let out = piha(&["init", "--secrets", custom.to_str().unwrap()], &cluster);
    assert!(out.status.success(), "{}", text(&out));
    assert_private(&custom);
    assert!(!tmp.path().join("secrets").exists());
}
