//! `piha stamp` and `piha status` end to end: the real binary on real files,
//! checked with the real tools (fsck.vfat, mtools, sfdisk). The node.yaml a
//! card must hold is written out here from tests/stamp/cluster.yaml, not
//! computed by the code that writes it.
//!
//! GPT and MBR disks are made here with gptman and mbrman, laid out like the
//! images `piha build` writes (ESP or system-boot, PIHA-CFG, root), with every
//! byte outside PIHA-CFG filled with a pattern so "nothing else changed" means
//! something.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use piha::image::fat::{FatFile, build};
use piha::image::partition::{PartitionType, TableKind, read_table, sfdisk_dump};
use piha_config::node::NodeConfig;
use piha_runner::{Cmd, Runner, SystemRunner};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BASIC_DATA_TYPE: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const AMD64_IMAGE_JSON: &[u8] = br#"{"board": "amd64", "distro": "debian-bookworm", "piha": "0.1.0"}"#;

/// A temporary directory holding tests/stamp/cluster.yaml and its secrets.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/stamp/cluster.yaml");
        fs::copy(&cluster, dir.path().join("cluster.yaml")).unwrap();
        let lab = Lab { dir };
        let out = lab.piha(&["init"]);
        assert!(out.status.success(), "piha init failed: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cluster_path(&self) -> PathBuf {
        self.path("cluster.yaml")
    }

    /// Runs `piha <command> --cluster cluster.yaml <rest>`.
    fn piha(&self, args: &[&str]) -> Output {
        let (command, rest) = args.split_first().unwrap();
        Command::new(env!("CARGO_BIN_EXE_piha"))
            .arg(command)
            .arg("--cluster")
            .arg(self.cluster_path())
            .args(rest)
            .output()
            .unwrap()
    }

    fn stamp(&self, node: &str, target: &Path) -> Output {
        self.piha(&["stamp", "--node", node, target.to_str().unwrap()])
    }
}

/// The node.yaml `piha stamp` writes for `node` of tests/stamp/cluster.yaml,
/// field by field from that file. `renderer` is the network renderer of the
/// image's distro: networkd for Debian, netplan for Ubuntu.
fn expected_node_yaml(node: &str, renderer: &str) -> String {
    // (role, runs kubeadm init, ip, interface, mac) from `nodes:`.
    let (role, init, ip, interface, mac) = match node {
        "lb1" => ("director", false, "10.0.2.10", "null", "null"),
        "cp1" => ("control-plane", true, "10.0.2.11", "null", "null"),
        "cp2" => ("control-plane", false, "10.0.2.12", "null", "null"),
        "cp3" => ("control-plane", false, "10.0.2.13", "null", "52:54:00:12:34:13"),
        "w1" => ("worker", false, "10.0.2.21", "enp0s2", "null"),
        _ => panic!("{node} is not a node of tests/stamp/cluster.yaml"),
    };
    format!(
        "\
# piha node identity for {node}. Written by `piha stamp`; do not edit: the last line is a checksum
# of the rest, which `piha-agent` checks. To change the node, re-stamp the card.
schema: 2
node:
  name: {node}
  role: {role}
  init: {init}
  board: amd64
  address: {ip}/24
  gateway: 10.0.2.2
  dns:
  - 10.0.2.3
  - 10.0.2.4
  domain: lab.test
  ntp:
  - 10.0.2.2
  interface: {interface}
  mac: {mac}
cluster:
  name: qemu-lab
  kubernetes_version: 1.34.1
  runtime: containerd
  proxy_mode: nftables
  vip: 10.0.2.100
  api_port: 6443
  pod_subnet: 10.244.0.0/16
  service_subnet: 10.96.0.0/12
  vrrp_router_id: 52
  network_renderer: {renderer}
  key_algorithm: ecdsa-p256
  bootstrap_token_ttl: 24h
peers:
- name: lb1
  ip: 10.0.2.10
  role: director
- name: cp1
  ip: 10.0.2.11
  role: control-plane
- name: cp2
  ip: 10.0.2.12
  role: control-plane
- name: cp3
  ip: 10.0.2.13
  role: control-plane
- name: w1
  ip: 10.0.2.21
  role: worker
ssh_authorized_keys:
- ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q tester@piha
"
    )
}

/// node.yaml as stamped onto a card holding `files`, after checking what
/// `expected_node_yaml` leaves out: the agent's own reader accepts it (the
/// seal line holds), it was stamped just now, and its `card.secrets` are
/// the digests of exactly the secret files on the card. Returns the text
/// without the `card:` section and the seal line.
fn stamped_yaml(files: &[(String, Vec<u8>)]) -> String {
    let text = String::from_utf8(mtools_file(files, "node.yaml").expect("node.yaml on the card")).unwrap();
    let cfg = NodeConfig::parse(Path::new("node.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(cfg.card.stamped_at) < 3600,
        "stamped_at {} is not now",
        cfg.card.stamped_at
    );
    let on_card: BTreeMap<String, String> = files
        .iter()
        .filter_map(|(p, b)| {
            p.strip_prefix("secrets/")
                .map(|rel| (rel.to_string(), piha_config::node::secret_digest(b)))
        })
        .collect();
    assert_eq!(cfg.card.secrets, on_card, "the digests in node.yaml are the card's files");
    assert_eq!(cfg.card.ca_not_before.is_some(), !on_card.is_empty(), "{text}");
    let cut = text.find("\ncard:\n").expect("a card: section") + 1;
    text[..cut].to_string()
}

fn piha_status(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_piha")).arg("status").args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "piha failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "piha should have failed:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run(cmd: Cmd) -> Vec<u8> {
    SystemRunner.run(&cmd).unwrap_or_else(|e| panic!("{e}")).stdout
}

/// An mtools image spec: the file, or the partition at `offset` inside it.
fn spec(img: &Path, offset: u64) -> String {
    if offset == 0 {
        img.display().to_string()
    } else {
        format!("{}@@{offset}", img.display())
    }
}

/// Every file on the FAT at `spec`, as mtools sees it, with its contents.
fn mtools_files(spec: &str) -> Vec<(String, Vec<u8>)> {
    let listing = String::from_utf8(run(Cmd::new("mdir").args(["-/", "-b", "-i", spec, "::"]))).unwrap();
    listing
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| {
            let path = l.trim_start_matches("::/").to_string();
            let contents = run(Cmd::new("mcopy").args(["-n", "-i", spec]).arg(format!("::{path}")).arg("-"));
            (path, contents)
        })
        .collect()
}

/// The paths in an `mtools_files` listing, sorted.
fn file_names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
    let mut names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    names.sort_unstable();
    names
}

/// The paths a card holds with `secrets` (relative to `secrets/`), sorted.
fn card_files(secrets: &[&str], image_json: bool) -> Vec<String> {
    let mut names = vec!["README.txt".to_string(), "node.yaml".to_string()];
    names.extend(secrets.iter().map(|rel| format!("secrets/{rel}")));
    if image_json {
        names.push("image.json".to_string());
    }
    names.sort_unstable();
    names
}

fn mtools_file(files: &[(String, Vec<u8>)], path: &str) -> Option<Vec<u8>> {
    files.iter().find(|(p, _)| p == path).map(|(_, c)| c.clone())
}

/// fsck.vfat -n on the filesystem at `offset..offset+size` of `img`.
fn fsck(img: &Path, offset: u64, size: u64) {
    let bytes = fs::read(img).unwrap();
    let part = tempfile::NamedTempFile::new().unwrap();
    fs::write(part.path(), &bytes[offset as usize..(offset + size) as usize]).unwrap();
    // fsck.vfat reports on stdout; send it to stderr so a failure shows it.
    run(Cmd::new("sh").args(["-c", "fsck.vfat -n \"$1\" >&2", "fsck"]).arg(part.path()));
}

/// Deterministic filler so untouched regions are not just zeros.
fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn guid(text: &str) -> [u8; 16] {
    uuid::Uuid::parse_str(text).unwrap().to_bytes_le()
}

/// A partition to lay out: name (GPT) or MBR type, size, and contents placed
/// at its start (the rest of it keeps the filler).
struct Part {
    name: &'static str,
    gpt_type: &'static str,
    mbr_type: u8,
    size: u64,
    contents: Vec<u8>,
}

fn piha_cfg(image_json: &[u8]) -> Vec<u8> {
    build("PIHA-CFG", 16 * MIB, None, &[FatFile::new("image.json", image_json.to_vec())]).unwrap()
}

fn uefi_layout(cfg: Vec<u8>) -> Vec<Part> {
    let esp = build("ESP", 8 * MIB, None, &[FatFile::new("EFI/BOOT/BOOTX64.EFI", pattern(100_000, 3))]).unwrap();
    vec![
        Part {
            name: "EFI",
            gpt_type: ESP_TYPE,
            mbr_type: 0xef,
            size: 8 * MIB,
            contents: esp,
        },
        Part {
            name: "PIHA-CFG",
            gpt_type: BASIC_DATA_TYPE,
            mbr_type: 0x0c,
            size: 16 * MIB,
            contents: cfg,
        },
        Part {
            name: "root",
            gpt_type: ROOT_X86_64_TYPE,
            mbr_type: 0x83,
            size: 20 * MIB,
            contents: Vec::new(),
        },
    ]
}

fn pi_layout(cfg: Vec<u8>) -> Vec<Part> {
    let boot = build(
        "system-boot",
        8 * MIB,
        None,
        &[FatFile::new("config.txt", b"arm_64bit=1\n".to_vec())],
    )
    .unwrap();
    vec![
        Part {
            name: "system-boot",
            gpt_type: BASIC_DATA_TYPE,
            mbr_type: 0x0c,
            size: 8 * MIB,
            contents: boot,
        },
        Part {
            name: "PIHA-CFG",
            gpt_type: BASIC_DATA_TYPE,
            mbr_type: 0x0c,
            size: 16 * MIB,
            contents: cfg,
        },
        Part {
            name: "writable",
            gpt_type: ROOT_X86_64_TYPE,
            mbr_type: 0x83,
            size: 20 * MIB,
            contents: Vec::new(),
        },
    ]
}

/// Writes a disk image with a GPT (`gpt`) or an MBR, partitions from 1 MiB on,
/// 1 MiB spare at the end for the backup GPT. Returns each partition's
/// (start, size) in bytes.
fn make_disk(path: &Path, parts: &[Part], gpt: bool) -> Vec<(u64, u64)> {
    let total = MIB + parts.iter().map(|p| p.size).sum::<u64>() + MIB;
    let mut bytes = pattern(total, 42);
    let mut at = MIB;
    let mut placed = Vec::new();
    for p in parts {
        bytes[at as usize..at as usize + p.contents.len()].copy_from_slice(&p.contents);
        placed.push((at, p.size));
        at += p.size;
    }
    let mut disk = Cursor::new(bytes);
    if gpt {
        let mut table = gptman::GPT::new_from(&mut disk, 512, guid("8C6B1E2A-5D0F-4F7E-9B1A-3C2D4E5F6A7B")).unwrap();
        for (i, (p, (start, size))) in parts.iter().zip(&placed).enumerate() {
            table[i as u32 + 1] = gptman::GPTPartitionEntry {
                partition_type_guid: guid(p.gpt_type),
                unique_partition_guid: guid(&format!("11111111-2222-4333-8444-5555555555{:02}", i + 1)),
                starting_lba: start / 512,
                ending_lba: (start + size) / 512 - 1,
                attribute_bits: 0,
                partition_name: p.name.into(),
            };
        }
        table.write_into(&mut disk).unwrap();
        gptman::GPT::write_protective_mbr_into(&mut disk, 512).unwrap();
    } else {
        let mut table = mbrman::MBR::new_from(&mut disk, 512, [0x61, 0x68, 0x69, 0x70]).unwrap();
        for (i, (p, (start, size))) in parts.iter().zip(&placed).enumerate() {
            table[i + 1] = mbrman::MBRPartitionEntry {
                boot: if i == 0 { mbrman::BOOT_ACTIVE } else { mbrman::BOOT_INACTIVE },
                first_chs: mbrman::CHS::empty(),
                sys: p.mbr_type,
                last_chs: mbrman::CHS::empty(),
                starting_lba: (start / 512) as u32,
                sectors: (size / 512) as u32,
            };
        }
        table.write_into(&mut disk).unwrap();
    }
    fs::write(path, disk.into_inner()).unwrap();
    placed
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Asserts that only `start..start+size` of the image differs.
fn assert_only_region_changed(before: &[u8], after: &[u8], start: u64, size: u64) {
    assert_eq!(before.len(), after.len(), "image size changed");
    let (s, e) = (start as usize, (start + size) as usize);
    assert!(sha(&before[..s]) == sha(&after[..s]), "bytes before the PIHA-CFG partition changed");
    assert!(sha(&before[e..]) == sha(&after[e..]), "bytes after the PIHA-CFG partition changed");
    assert!(before[s..e] != after[s..e], "the PIHA-CFG partition did not change");
}

/// sfdisk and piha agree on the table.
fn cross_check_with_sfdisk(img: &Path, gpt: bool) {
    let theirs = sfdisk_dump(&SystemRunner, img).unwrap();
    let ours = read_table(&mut fs::File::open(img).unwrap(), 512).unwrap();
    assert_eq!(theirs.label, if gpt { "gpt" } else { "dos" });
    assert_eq!(ours.kind, Some(if gpt { TableKind::Gpt } else { TableKind::Mbr }));
    assert_eq!(theirs.partitions.len(), ours.partitions.len());
    for (t, o) in theirs.partitions.iter().zip(&ours.partitions) {
        assert_eq!(t.start * 512, o.start, "{}", t.node);
        assert_eq!(t.size * 512, o.size, "{}", t.node);
        assert!(t.node.ends_with(&o.number.to_string()), "{} vs {}", t.node, o.number);
        match &o.kind {
            PartitionType::Gpt { type_guid, name } => {
                assert_eq!(&t.type_, type_guid);
                assert_eq!(t.name.as_deref(), Some(name.as_str()));
            }
            PartitionType::Mbr { sys } => assert_eq!(t.type_, format!("{sys:x}")),
        }
    }
}

/// The secrets each role's card carries, under `secrets/` on the card and in
/// the secrets directory alike: control planes get the cluster CAs, the
/// service-account key pair, the token and the CA hash; workers only the token
/// and the hash; directors nothing.
const CONTROL_PLANE_SECRETS: [&str; 10] = [
    "bootstrap-token",
    "ca-cert-hash",
    "pki/ca.crt",
    "pki/ca.key",
    "pki/etcd/ca.crt",
    "pki/etcd/ca.key",
    "pki/front-proxy-ca.crt",
    "pki/front-proxy-ca.key",
    "pki/sa.key",
    "pki/sa.pub",
];
const WORKER_SECRETS: [&str; 2] = ["bootstrap-token", "ca-cert-hash"];

#[test]
fn partition_images_hold_what_each_role_needs() {
    let lab = Lab::new();
    let secrets = lab.path("secrets");
    for (node, role, wanted) in [
        ("cp1", "control-plane", &CONTROL_PLANE_SECRETS[..]),
        ("w1", "worker", &WORKER_SECRETS[..]),
        ("lb1", "director", &[][..]),
    ] {
        let img = lab.path(&format!("{node}.img"));
        let out = ok(&lab.piha(&["stamp", "--node", node, "--partition-image", img.to_str().unwrap()]));
        assert!(out.starts_with(&format!("stamped {node} ({role})")), "{out}");
        let bytes = fs::read(&img).unwrap();
        assert_eq!(bytes.len() as u64, 16 * MIB);
        assert!(
            out.contains(&format!("sha256 {}", sha(&bytes))),
            "summary names the partition's sha256: {out}"
        );
        fsck(&img, 0, 16 * MIB);
        let files = mtools_files(&spec(&img, 0));

        assert_eq!(file_names(&files), card_files(wanted, false), "the files on {node}'s card");

        assert_eq!(stamped_yaml(&files), expected_node_yaml(node, "networkd"));
        let readme = String::from_utf8(mtools_file(&files, "README.txt").unwrap()).unwrap();
        assert!(
            readme.starts_with(&format!(
                "PIHA-CFG: the identity of Kubernetes node {node} ({role}) of cluster qemu-lab.\r\n"
            )),
            "{readme}"
        );

        for rel in wanted {
            assert_eq!(
                mtools_file(&files, &format!("secrets/{rel}")).unwrap(),
                fs::read(secrets.join(rel)).unwrap(),
                "secrets/{rel} on {node}'s card differs from the secrets directory"
            );
        }
        if role != "control-plane" {
            for (path, contents) in &files {
                assert!(
                    !String::from_utf8_lossy(contents).contains("PRIVATE KEY"),
                    "{role} card holds a private key in {path}"
                );
            }
        }
        // A card that never booted says so.
        let status = ok(&piha_status(&[img.to_str().unwrap()]));
        assert!(
            status.contains("no status.json: the node has not booted with this card yet"),
            "{status}"
        );
    }
}

#[test]
fn stamping_a_gpt_image_changes_only_piha_cfg() {
    let lab = Lab::new();
    let img = lab.path("amd64.img");
    let placed = make_disk(&img, &uefi_layout(piha_cfg(AMD64_IMAGE_JSON)), true);
    cross_check_with_sfdisk(&img, true);
    let (start, size) = placed[1];
    let before = fs::read(&img).unwrap();

    let out = ok(&lab.stamp("cp2", &img));
    assert!(out.contains("partition 2") && out.contains("GPT partition name"), "{out}");
    let after = fs::read(&img).unwrap();
    assert_only_region_changed(&before, &after, start, size);
    assert!(out.contains(&sha(&after[start as usize..(start + size) as usize])), "{out}");
    fsck(&img, start, size);
    let files = mtools_files(&spec(&img, start));
    assert_eq!(stamped_yaml(&files), expected_node_yaml("cp2", "networkd"));
    assert_eq!(
        mtools_file(&files, "image.json").as_deref(),
        Some(AMD64_IMAGE_JSON),
        "image.json is kept byte for byte"
    );
    let blkid = String::from_utf8(run(Cmd::new("blkid")
        .args(["-p", "-o", "export", "-O"])
        .arg(start.to_string())
        .arg(&img)))
    .unwrap();
    assert!(blkid.contains("LABEL=PIHA-CFG") && blkid.contains("TYPE=vfat"), "{blkid}");
    cross_check_with_sfdisk(&img, true);
}

/// An image cut short (a download or copy that stopped): refused before
/// anything is written, and not grown back to size.
#[test]
fn a_truncated_image_is_refused_and_left_as_it_was() {
    let lab = Lab::new();
    for gpt in [true, false] {
        let img = lab.path(if gpt { "gpt.img" } else { "mbr.img" });
        let layout = if gpt {
            uefi_layout(piha_cfg(AMD64_IMAGE_JSON))
        } else {
            pi_layout(piha_cfg(b"{}"))
        };
        let placed = make_disk(&img, &layout, gpt);
        let last_end = placed.iter().map(|(start, size)| start + size).max().unwrap();
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(last_end - MIB).unwrap();
        drop(f);
        let before = fs::read(&img).unwrap();
        let err = failed(&lab.stamp("cp2", &img));
        assert!(err.contains("is truncated") && err.contains("nothing was written"), "{err}");
        assert_eq!(fs::read(&img).unwrap(), before, "the image was changed");
    }
}

#[test]
fn stamping_an_mbr_image_changes_only_piha_cfg() {
    let lab = Lab::new();
    let img = lab.path("pi.img");
    let placed = make_disk(&img, &pi_layout(piha_cfg(AMD64_IMAGE_JSON)), false);
    cross_check_with_sfdisk(&img, false);
    let (start, size) = placed[1];
    let before = fs::read(&img).unwrap();

    let out = ok(&lab.stamp("w1", &img));
    assert!(out.contains("partition 2") && out.contains("FAT label"), "{out}");
    let after = fs::read(&img).unwrap();
    assert_only_region_changed(&before, &after, start, size);
    fsck(&img, start, size);
    let files = mtools_files(&spec(&img, start));
    assert_eq!(stamped_yaml(&files), expected_node_yaml("w1", "networkd"));
    for (path, contents) in &files {
        assert!(
            !String::from_utf8_lossy(contents).contains("PRIVATE KEY"),
            "worker card holds a private key in {path}"
        );
    }
}

#[test]
fn a_fresh_unformatted_piha_cfg_partition_is_stamped() {
    let lab = Lab::new();
    let img = lab.path("fresh.img");
    let placed = make_disk(&img, &uefi_layout(Vec::new()), true);
    let (start, size) = placed[1];
    let before = fs::read(&img).unwrap();
    ok(&lab.stamp("lb1", &img));
    assert_only_region_changed(&before, &fs::read(&img).unwrap(), start, size);
    fsck(&img, start, size);
    let files = mtools_files(&spec(&img, start));
    assert_eq!(
        file_names(&files),
        ["README.txt", "node.yaml"],
        "a director gets no secrets, and there was no image.json to keep"
    );
    assert_eq!(stamped_yaml(&files), expected_node_yaml("lb1", "networkd"));
}

#[test]
fn node_yaml_names_the_network_renderer_of_the_image_distro() {
    let lab = Lab::new();
    let img = lab.path("noble.img");
    let image_json: &[u8] = br#"{"board": "amd64", "distro": "ubuntu-noble"}"#;
    let placed = make_disk(&img, &uefi_layout(piha_cfg(image_json)), true);
    ok(&lab.stamp("cp2", &img));
    let files = mtools_files(&spec(&img, placed[1].0));
    // The cluster file says Debian (networkd), the image is Ubuntu: the image wins.
    assert_eq!(stamped_yaml(&files), expected_node_yaml("cp2", "netplan"));
    assert_eq!(mtools_file(&files, "image.json").as_deref(), Some(image_json));
}

#[test]
fn unknown_node_writes_nothing() {
    let lab = Lab::new();
    let img = lab.path("amd64.img");
    make_disk(&img, &uefi_layout(piha_cfg(AMD64_IMAGE_JSON)), true);
    let before = sha(&fs::read(&img).unwrap());
    let err = failed(&lab.stamp("cp9", &img));
    assert!(err.contains("\"cp9\"") && err.contains("lb1, cp1, cp2, cp3, w1"), "{err}");
    assert_eq!(sha(&fs::read(&img).unwrap()), before);

    let bare = lab.path("cp9.img");
    let err = failed(&lab.piha(&["stamp", "--node", "cp9", "--partition-image", bare.to_str().unwrap()]));
    assert!(
        err.contains("no node named \"cp9\"") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(!bare.exists());
}

#[test]
fn an_image_for_another_board_is_refused() {
    let lab = Lab::new();
    let img = lab.path("rpi4.img");
    make_disk(&img, &pi_layout(piha_cfg(br#"{"board": "rpi4", "distro": "ubuntu-noble"}"#)), false);
    let before = sha(&fs::read(&img).unwrap());
    let err = failed(&lab.stamp("cp1", &img));
    assert!(
        err.contains("\"rpi4\"") && err.contains("\"amd64\"") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(sha(&fs::read(&img).unwrap()), before);
}

#[test]
fn a_disk_without_piha_cfg_is_explained() {
    let lab = Lab::new();
    let img = lab.path("other.img");
    let mut parts = uefi_layout(Vec::new());
    parts[1].name = "data";
    make_disk(&img, &parts, true);
    let before = sha(&fs::read(&img).unwrap());
    let err = failed(&lab.stamp("cp1", &img));
    assert!(
        err.contains("no PIHA-CFG partition") && err.contains("GPT name \"EFI\"") && err.contains("FAT label \"ESP\""),
        "{err}"
    );
    assert_eq!(sha(&fs::read(&img).unwrap()), before);
}

#[test]
fn restamping_changes_the_identity() {
    let lab = Lab::new();
    let img = lab.path("amd64.img");
    let placed = make_disk(&img, &uefi_layout(piha_cfg(AMD64_IMAGE_JSON)), true);
    let (start, size) = placed[1];
    // Worker, then control plane, then worker again: each stamp replaces the
    // whole card, so the control plane's keys leave with its identity.
    for (node, secrets) in [
        ("w1", &WORKER_SECRETS[..]),
        ("cp3", &CONTROL_PLANE_SECRETS[..]),
        ("w1", &WORKER_SECRETS[..]),
    ] {
        ok(&lab.stamp(node, &img));
        fsck(&img, start, size);
        let files = mtools_files(&spec(&img, start));
        assert_eq!(file_names(&files), card_files(secrets, true), "after stamping {node}");
        assert_eq!(stamped_yaml(&files), expected_node_yaml(node, "networkd"));
        assert_eq!(mtools_file(&files, "image.json").as_deref(), Some(AMD64_IMAGE_JSON));
    }
}

const STATUS_JSON: &str = r#"{
  "schema": 1,
  "node": "cp2",
  "role": "control-plane",
  "phase": "failed",
  "updated": 1700000100,
  "boots": 3,
  "steps": [
    {"name": "identity", "outcome": "ok", "started": 1700000000, "finished": 1700000001, "wall_ms": 900},
    {"name": "control-plane-join", "outcome": "failed", "started": 1700000050,
     "error": "kubeadm join exited with 1", "stderr_tail": "error execution phase preflight\nconnection refused"}
  ],
  "versions": {"piha-agent": "0.1.0"},
  "error": "step control-plane-join failed"
}
"#;

#[test]
fn status_reads_what_the_agent_wrote() {
    let lab = Lab::new();
    let dir = lab.path("status");
    fs::create_dir(&dir).unwrap();
    let json_file = dir.join("status.json");
    fs::write(&json_file, STATUS_JSON).unwrap();

    // On a bare partition image, written the way the agent's vfat mount would.
    let bare = lab.path("cp2.img");
    ok(&lab.piha(&["stamp", "--node", "cp2", "--partition-image", bare.to_str().unwrap()]));
    run(Cmd::new("mcopy")
        .args(["-i", bare.to_str().unwrap()])
        .arg(&json_file)
        .arg("::status.json"));
    // And inside a GPT image.
    let img = lab.path("amd64.img");
    let placed = make_disk(&img, &uefi_layout(piha_cfg(AMD64_IMAGE_JSON)), true);
    ok(&lab.stamp("cp2", &img));
    run(Cmd::new("mcopy")
        .args(["-i", &spec(&img, placed[1].0)])
        .arg(&json_file)
        .arg("::status.json"));

    for target in [&bare, &img] {
        let t = target.to_str().unwrap();
        let human = ok(&piha_status(&[t]));
        assert!(human.starts_with("node cp2 (control-plane): phase failed"), "{human}");
        assert!(
            human.contains("control-plane-join") && human.contains("kubeadm join exited with 1"),
            "{human}"
        );
        assert!(human.contains("| connection refused"), "{human}");
        let raw = ok(&piha_status(&[t, "--json"]));
        let got: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let want: serde_json::Value = serde_json::from_str(STATUS_JSON).unwrap();
        assert_eq!(got, want);
    }
    fsck(&bare, 0, 16 * MIB);
}
