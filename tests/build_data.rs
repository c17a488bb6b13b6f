//! `piha build`'s data and stage 2 without mmdebstrap: board and distro files,
//! the resolved plan (which overlays, which packages, which sources), the
//! host apt mirror lookup, preflight's message for an unreachable source, and
//! customize run over a small synthetic rootfs tar built here.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use piha::cli::Profile;
use piha::host::apt;
use piha::inputs::board::Board;
use piha::inputs::catalog;
use piha::inputs::distro::Distro;
use piha::pipeline::customize::{self, Customized};
use piha::pipeline::plan::{Plan, Request};
use piha::pipeline::preflight;
use piha::pipeline::{self, EMBEDDED_CLUSTER};
use piha::progress::Progress;
use piha_config::cluster::ClusterFile;
use piha_runner::SystemRunner;

const EPOCH: u64 = 1_234_567_890;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("builder/ has a parent")
        .to_path_buf()
}

#[test]
fn every_board_and_distro_file_loads() {
    let c = catalog::catalog().unwrap();
    assert!(c.boards.contains(&"amd64".to_string()), "{:?}", c.boards);
    assert!(c.distros.contains(&"debian-bookworm".to_string()) && c.distros.contains(&"ubuntu-noble".to_string()));
    for name in &c.boards {
        let (board, _) = piha::inputs::board::load(name).unwrap_or_else(|e| panic!("boards/{name}.yaml: {e:#}"));
        assert_eq!(&board.name, name);
    }
    for name in &c.distros {
        let (distro, _, _) = piha::inputs::distro::load(name).unwrap_or_else(|e| panic!("distros/{name}.yaml: {e:#}"));
        assert_eq!(&distro.name, name);
    }
}

#[test]
fn a_bad_board_file_is_rejected_naming_file_and_field() {
    let good = std::fs::read_to_string(repo().join("boards/amd64.yaml")).unwrap();
    let file = Path::new("/some/where/boards/amd64.yaml");

    let typo = good.replace("partition_table:", "partition_tabel:");
    let err = format!("{:#}", Board::parse(file, &typo).unwrap_err());
    assert!(
        err.contains("/some/where/boards/amd64.yaml") && err.contains("partition_tabel"),
        "{err}"
    );

    let bad_kind = good.replace("partition_table: gpt", "partition_table: msdos");
    let err = format!("{:#}", Board::parse(file, &bad_kind).unwrap_err());
    assert!(
        err.contains("amd64.yaml") && err.contains("partition_table") && err.contains("msdos"),
        "{err}"
    );

    let nested = good.replace("free_mib:", "free_mb:");
    let err = format!("{:#}", Board::parse(file, &nested).unwrap_err());
    assert!(err.contains("amd64.yaml") && err.contains("free_mb"), "{err}");
}

#[test]
fn a_bad_distro_file_is_rejected_naming_file_and_field() {
    let good = std::fs::read_to_string(repo().join("distros/debian-bookworm.yaml")).unwrap();
    let file = Path::new("distros/debian-bookworm.yaml");
    let err = format!(
        "{:#}",
        Distro::parse(file, &good.replace("family: debian", "family: gentoo")).unwrap_err()
    );
    assert!(
        err.contains("debian-bookworm.yaml") && err.contains("family") && err.contains("gentoo"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        Distro::parse(file, &good.replace("network_renderer:", "renderer:")).unwrap_err()
    );
    assert!(err.contains("debian-bookworm.yaml") && err.contains("renderer"), "{err}");
}

fn load_req(distro: &str, profile: Profile, cluster_file: Option<&str>) -> Request {
    let (board, board_file) = piha::inputs::board::load("amd64").unwrap();
    let (distro, distro_file, distro_text) = piha::inputs::distro::load(distro).unwrap();
    let (cluster, cluster_label) = match cluster_file {
        Some(f) => {
            let p = repo().join(f);
            (ClusterFile::load(&p).unwrap(), p.display().to_string())
        }
        None => (
            ClusterFile::parse(Path::new("embedded"), EMBEDDED_CLUSTER).unwrap(),
            "embedded".to_string(),
        ),
    };
    Request {
        board,
        board_file,
        distro,
        distro_file,
        distro_text,
        cluster,
        cluster_label,
        profile,
        k8s_bundle: None,
        mirror: None,
    }
}

/// A host whose apt serves bookworm from a (fake) mirror: what `url: host` resolves against.
fn host_sources() -> Vec<apt::AptSource> {
    apt::parse_deb822(
        Path::new("t.sources"),
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates bookworm-security\nComponents: main\n",
    )
}

fn plan(profile: Profile) -> Plan {
    Plan::resolve(
        load_req("debian-bookworm", profile, Some("examples/qemu-lab.yaml")),
        &host_sources(),
        &repo(),
    )
    .unwrap()
}

#[test]
fn the_production_overlay_set_never_includes_the_test_overlay() {
    let test_overlay = repo().join("overlays/test");
    for distro in ["debian-bookworm", "ubuntu-noble"] {
        for cluster in [None, Some("examples/qemu-lab.yaml")] {
            let p = Plan::resolve(load_req(distro, Profile::Production, cluster), &host_sources(), &repo()).unwrap();
            assert!(!p.overlays.contains(&test_overlay), "{distro}: {:?}", p.overlays);
            assert!(p.skipped.is_empty(), "production skips nothing: {:?}", p.skipped);
            assert!(p.packages.iter().any(|x| x == "kubeadm"), "{:?}", p.packages);
        }
    }
    let t = plan(Profile::Test);
    assert!(t.overlays.contains(&test_overlay));
    assert_eq!(t.skipped[0].role, "kubernetes");
}

#[test]
fn the_host_mirror_comes_from_deb822_or_one_line_sources() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("etc/apt/sources.list.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("debian.sources"),
        "Types: deb\n# a comment\nURIs: http://deb822.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .unwrap();
    std::fs::write(
        root.path().join("etc/apt/sources.list"),
        "deb [arch=amd64] http://oneline.example/debian-security bookworm-security main\n",
    )
    .unwrap();
    let sources = apt::host_sources(root.path());
    assert_eq!(
        apt::mirror_for_suite(&sources, "bookworm").as_deref(),
        Some("http://deb822.example/debian")
    );
    assert_eq!(
        apt::mirror_for_suite(&sources, "bookworm-security").as_deref(),
        Some("http://oneline.example/debian-security")
    );

    // Resolved into the plan: the distro says `mirror: host`.
    let p = Plan::resolve(
        load_req("debian-bookworm", Profile::Test, Some("examples/qemu-lab.yaml")),
        &sources,
        &repo(),
    )
    .unwrap();
    assert_eq!(p.sources[0].release_url(), "http://deb822.example/debian/dists/bookworm/Release");
    assert_eq!(
        p.sources.last().unwrap().release_url(),
        "http://oneline.example/debian-security/dists/bookworm-security/Release"
    );
}

#[test]
fn preflight_names_the_unreachable_source_and_the_offline_route() {
    let mut req = load_req("debian-bookworm", Profile::Test, Some("examples/qemu-lab.yaml"));
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    req.mirror = Some("http://127.0.0.1:9/debian".into());
    if let Some(s) = req.distro.security.as_mut() {
        s.mirror.url = "http://127.0.0.1:9/debian-security".into();
    }
    let p = Plan::resolve(req, &[], &repo()).unwrap();
    let err = format!("{:#}", preflight::check_sources(&p, &SystemRunner, &Progress::quiet()).unwrap_err());
    assert!(
        err.contains("cannot reach http://127.0.0.1:9/debian/dists/bookworm/Release (debian-bookworm mirror)"),
        "{err}"
    );
    assert!(
        err.contains("http://127.0.0.1:9/debian-security/dists/bookworm-security/Release (debian-bookworm security)"),
        "{err}"
    );
    // This build is the offline route already: printing it again would be a loop.
    assert!(err.contains("Offline route: this build is on it already"), "{err}");
    assert!(!err.contains("`piha build"), "{err}");
    assert!(
        err.contains("`--mirror URL` points the build at a Debian mirror you can reach"),
        "{err}"
    );
}

// --- customize over a synthetic rootfs -----------------------------------

/// Builds a small rootfs tar shaped like mmdebstrap's: merged /usr, a unit
/// with an [Install] section, SSH host keys and a machine-id that must go,
/// two kernels, a hard link and a file capability in a pax xattr record.
fn synthetic_rootfs(path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut entry = |name: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>, xattr: Option<(&str, &[u8])>| {
        if let Some((k, v)) = xattr {
            b.append_pax_extensions([(k, v)]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.set_link_name_literal(l).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};
    // Out of path order on purpose: the output must be sorted.
    entry("./usr/", D, 0o755, b"", None, None);
    entry("./", D, 0o755, b"", None, None);
    entry("./lib", L, 0o777, b"", Some("usr/lib"), None);
    entry("./bin", L, 0o777, b"", Some("usr/bin"), None);
    for d in [
        "./etc/",
        "./etc/ssh/",
        "./etc/systemd/",
        "./etc/systemd/system/",
        "./etc/systemd/system/timers.target.wants/",
        "./etc/sudoers.d/",
        "./home/",
        "./home/piha/",
        "./boot/",
        "./usr/bin/",
        "./usr/lib/",
        "./usr/lib/systemd/",
        "./usr/lib/systemd/system/",
        "./usr/lib/systemd/boot/",
        "./usr/lib/systemd/boot/efi/",
        "./var/",
        "./var/lib/",
        "./var/lib/dbus/",
        "./var/lib/dpkg/",
    ] {
        entry(d, D, 0o755, b"", None, None);
    }
    entry("./etc/machine-id", F, 0o444, b"0123456789abcdef0123456789abcdef\n", None, None);
    entry(
        "./var/lib/dbus/machine-id",
        F,
        0o444,
        b"0123456789abcdef0123456789abcdef\n",
        None,
        None,
    );
    entry("./etc/hostname", F, 0o644, b"buildhost\n", None, None);
    for k in ["rsa", "ed25519"] {
        entry(&format!("./etc/ssh/ssh_host_{k}_key"), F, 0o600, b"PRIVATE", None, None);
        entry(&format!("./etc/ssh/ssh_host_{k}_key.pub"), F, 0o644, b"PUBLIC", None, None);
    }
    let unit = |after: &str| format!("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\n{after}\n");
    entry(
        "./usr/lib/systemd/system/systemd-networkd.service",
        F,
        0o644,
        unit("WantedBy=multi-user.target\nAlso=systemd-networkd.socket\nAlias=dbus-org.freedesktop.network1.service").as_bytes(),
        None,
        None,
    );
    entry(
        "./usr/lib/systemd/system/systemd-networkd.socket",
        F,
        0o644,
        unit("WantedBy=sockets.target").as_bytes(),
        None,
        None,
    );
    entry(
        "./usr/lib/systemd/system/systemd-resolved.service",
        F,
        0o644,
        unit("WantedBy=sysinit.target").as_bytes(),
        None,
        None,
    );
    entry(
        "./usr/lib/systemd/system/apt-daily.timer",
        F,
        0o644,
        unit("WantedBy=timers.target").as_bytes(),
        None,
        None,
    );
    entry(
        "./etc/systemd/system/timers.target.wants/apt-daily.timer",
        L,
        0o777,
        b"",
        Some("/usr/lib/systemd/system/apt-daily.timer"),
        None,
    );
    entry(
        "./usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        F,
        0o644,
        b"MZ-systemd-boot",
        None,
        None,
    );
    entry("./boot/vmlinuz-6.1.0-9-amd64", F, 0o644, b"old kernel", None, None);
    entry("./boot/vmlinuz-6.1.0-10-amd64", F, 0o644, b"new kernel", None, None);
    entry("./boot/initrd.img-6.1.0-10-amd64", F, 0o644, b"new initrd", None, None);
    entry("./boot/initrd.img-6.1.0-9-amd64", F, 0o644, b"old initrd", None, None);
    entry("./usr/bin/perl", F, 0o755, b"#!perl", None, None);
    // The link sorts before its target: the output must put data first.
    entry("./usr/bin/perl5.36.0", H, 0o755, b"", Some("./usr/bin/perl"), None);
    entry(
        "./usr/bin/ping",
        F,
        0o755,
        b"ping",
        None,
        Some((
            "SCHILY.xattr.security.capability",
            b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        )),
    );
    entry("./var/lib/dpkg/status", F, 0o644, b"Package: systemd\nStatus: install ok installed\nVersion: 252.38-1~deb12u1\nArchitecture: amd64\n\nPackage: linux-image-6.1.0-10-amd64\nStatus: install ok installed\nVersion: 6.1.10-1\nArchitecture: amd64\n", None, None);
    b.into_inner().unwrap();
}

/// A tar's entries: name → (type, mode, uid, gid, mtime, link, data, xattrs).
type Listing = BTreeMap<String, (tar::EntryType, u32, u64, u64, u64, Option<String>, Vec<u8>, Vec<(String, Vec<u8>)>)>;

fn list(path: &Path) -> (Vec<String>, Listing) {
    let mut order = Vec::new();
    let mut map = Listing::new();
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                xattrs.push((x.key().unwrap().to_string(), x.value_bytes().to_vec()));
            }
        }
        let h = e.header().clone();
        let link = e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        order.push(name.clone());
        map.insert(
            name,
            (
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mtime().unwrap(),
                link,
                data,
                xattrs,
            ),
        );
    }
    (order, map)
}

fn customize_with(profile: Profile, dir: &Path, name: &str) -> (PathBuf, Customized) {
    let rootfs = dir.join("rootfs.tar");
    if !rootfs.exists() {
        synthetic_rootfs(&rootfs);
    }
    // An extra overlay exercising merged-/usr paths and sudoers modes.
    let extra = dir.join("extra-overlay");
    std::fs::create_dir_all(extra.join("lib/systemd/system")).unwrap();
    std::fs::write(
        extra.join("lib/systemd/system/extra.service"),
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::fs::create_dir_all(extra.join("etc/systemd/system-preset")).unwrap();
    std::fs::write(extra.join("etc/systemd/system-preset/50-extra.preset"), "enable extra.service\n").unwrap();

    let plan = plan(profile);
    let info = "{\"board\":\"amd64\"}\n";
    let mut c = pipeline::customization(&plan, b"\x7fELF fake agent", info, EPOCH).unwrap();
    c.overlays.push(extra);
    let out = dir.join(name);
    let done = customize::run(&rootfs, &c, &out, &Progress::quiet()).unwrap();
    (out, done)
}

/// Every regular file under an overlay, as the tar names it.
fn overlay_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(format!("./{}", p.strip_prefix(dir).unwrap().display()));
            }
        }
    }
    out
}

#[test]
fn customize_is_deterministic_and_drops_host_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (a, done) = customize_with(Profile::Production, dir.path(), "a.tar");
    let (b, _) = customize_with(Profile::Production, dir.path(), "b.tar");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same inputs, same bytes");

    let (order, map) = list(&a);
    let mut sorted = order.clone();
    sorted.sort_by(|x, y| x.trim_end_matches('/').cmp(y.trim_end_matches('/')));
    assert_eq!(order, sorted, "entries are in path order");
    assert_eq!(order[0], "./");
    for (name, e) in &map {
        assert_eq!(e.4, EPOCH, "{name}: mtime is SOURCE_DATE_EPOCH");
    }

    // No identity from the build host.
    assert_eq!(map["./etc/machine-id"].6, b"uninitialized\n");
    assert!(!map.contains_key("./var/lib/dbus/machine-id"));
    assert!(
        !map.keys().any(|k| k.starts_with("./etc/ssh/ssh_host_")),
        "{:?}",
        map.keys().filter(|k| k.contains("ssh_host")).collect::<Vec<_>>()
    );
    assert_eq!(map["./etc/hostname"].6, b"piha\n");

    // The admin user's key, owned by uid 1000.
    let keys = &map["./home/piha/.ssh/authorized_keys"];
    assert_eq!((keys.1, keys.2, keys.3), (0o600, 1000, 1000));
    assert!(String::from_utf8_lossy(&keys.6).contains("tester@piha"));
    let ssh_dir = &map["./home/piha/.ssh/"];
    assert_eq!((ssh_dir.1, ssh_dir.2), (0o700, 1000));
    assert_eq!(map["./etc/sudoers.d/piha"].1, 0o440);
    assert_eq!(map["./usr/bin/piha-agent"].1, 0o755);

    // Units enabled from the presets, with their [Install] sections.
    let link = |p: &str| map.get(p).and_then(|e| e.5.clone());
    assert_eq!(
        link("./etc/systemd/system/multi-user.target.wants/systemd-networkd.service").as_deref(),
        Some("/usr/lib/systemd/system/systemd-networkd.service")
    );
    assert_eq!(
        link("./etc/systemd/system/sockets.target.wants/systemd-networkd.socket").as_deref(),
        Some("/usr/lib/systemd/system/systemd-networkd.socket")
    );
    assert_eq!(
        link("./etc/systemd/system/dbus-org.freedesktop.network1.service").as_deref(),
        Some("/usr/lib/systemd/system/systemd-networkd.service")
    );
    assert_eq!(
        link("./etc/systemd/system/multi-user.target.wants/piha-ssh-hostkeys.service").as_deref(),
        Some("/usr/lib/systemd/system/piha-ssh-hostkeys.service")
    );
    assert_eq!(
        link("./etc/systemd/system/multi-user.target.wants/extra.service").as_deref(),
        Some("/usr/lib/systemd/system/extra.service")
    );
    assert!(
        !map.contains_key("./etc/systemd/system/timers.target.wants/apt-daily.timer"),
        "disabled by the base preset"
    );
    assert!(
        done.enabled
            .iter()
            .any(|e| e.ends_with("sysinit.target.wants/systemd-resolved.service")),
        "{:?}",
        done.enabled
    );
    // The overlay's lib/ path went through the rootfs's lib -> usr/lib symlink.
    assert!(map.contains_key("./usr/lib/systemd/system/extra.service"));
    assert!(!map.contains_key("./lib/systemd/system/extra.service"));
    assert_eq!(map["./lib"].0, tar::EntryType::Symlink);

    // Hard links: the first name in path order holds the data.
    assert_eq!(map["./usr/bin/perl"].0, tar::EntryType::Regular);
    assert_eq!(map["./usr/bin/perl"].6, b"#!perl");
    assert_eq!(map["./usr/bin/perl5.36.0"].0, tar::EntryType::Link);
    assert_eq!(map["./usr/bin/perl5.36.0"].5.as_deref(), Some("./usr/bin/perl"));
    // Extended attributes survive.
    assert!(map["./usr/bin/ping"].7.iter().any(|(k, _)| k == "SCHILY.xattr.security.capability"));

    // Templates rendered; boot files picked (the newest kernel); packages read.
    let fstab = String::from_utf8_lossy(&map["./etc/fstab"].6).into_owned();
    assert!(
        fstab.contains("LABEL=piha-root\t/\text4") && fstab.contains("/boot/efi\tvfat"),
        "{fstab}"
    );
    let boot: BTreeMap<String, Vec<u8>> = done.boot_files.iter().map(|f| (f.path.clone(), f.contents.clone())).collect();
    assert_eq!(boot["vmlinuz"], b"new kernel");
    assert_eq!(boot["initrd.img"], b"new initrd");
    assert_eq!(boot["EFI/BOOT/BOOTX64.EFI"], b"MZ-systemd-boot");
    assert_eq!(done.packages.len(), 2);
    assert_eq!(done.packages[0].name, "linux-image-6.1.0-10-amd64");
}

#[test]
fn a_production_root_never_carries_the_test_overlay() {
    let test_overlay = repo().join("overlays/test");
    let dir = tempfile::tempdir().unwrap();
    let (prod, _) = customize_with(Profile::Production, dir.path(), "prod.tar");
    let (_, prod_map) = list(&prod);
    let test_files = overlay_files(&test_overlay);
    for f in &test_files {
        assert!(!prod_map.contains_key(f), "{f} from overlays/test is in a production root");
    }
    assert!(
        !prod_map.contains_key("./usr/local/bin/kubeadm"),
        "the recording kubeadm is in a production root"
    );

    let (test, _) = customize_with(Profile::Test, dir.path(), "test.tar");
    let (_, test_map) = list(&test);
    for f in &test_files {
        let path = f.trim_end_matches(".hbs");
        assert!(
            test_map.contains_key(path) || test_map.contains_key(&path.replace("./lib/", "./usr/lib/")),
            "{f} missing from the test root"
        );
    }
}
