//! `piha flash` on loop devices and files: the bytes land, unmapped ranges are
//! left alone, every failure leaves the first MiB zeroed, and every refusal
//! happens before a byte is written. Needs root (losetup, mount).

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

#[path = "flash/image.rs"]
mod image;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use image::{CFG_SIZE, CFG_START, IMAGE_SIZE, Lab, MIB, TestImage, assert_same, failed, ok, pattern_file, run, sha256_hex};
use piha::card::ledger::{Ledger, ledger_path};
use piha::device::source::ImageSource;
use piha::device::target::{BlockTarget, FailingTarget, Failure, FileTarget, WriteTarget};
use piha::device::write::{HEAD, Verify, WriteReport, write_image, write_image_with};
use piha::image::bmap::Bmap;
use piha::progress::Progress;
use piha_config::node::NodeConfig;
use piha_runner::{Cmd, SystemRunner};
use sha2::{Digest, Sha256};
use support::disk::{Loop, Mount};

fn flash_lib(image: &Path, target: &mut dyn WriteTarget) -> anyhow::Result<WriteReport> {
    let source = ImageSource::open(image, None, &SystemRunner)?;
    write_image(source.stream()?, &source.bmap, target, &Progress::quiet())
}

/// Byte ranges of the image the bmap leaves unmapped.
fn unmapped(bmap: &Bmap) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for r in &bmap.ranges {
        let b = bmap.byte_range(r);
        if b.start > pos {
            out.push((pos, b.start));
        }
        pos = b.end;
    }
    if pos < bmap.image_size {
        out.push((pos, bmap.image_size));
    }
    out
}

/// The report's mapped sha256: sha256 over the raw sha256 of each mapped
/// range's bytes in offset order, a range that crosses the end of the first
/// MiB counted as two pieces (the first MiB is written last).
fn mapped_sha256(image: &[u8], bmap: &Bmap) -> String {
    let mut outer = Sha256::new();
    for r in &bmap.ranges {
        let b = bmap.byte_range(r);
        let cut = if b.start < HEAD && b.end > HEAD {
            vec![b.start..HEAD, HEAD..b.end]
        } else {
            vec![b]
        };
        for piece in cut {
            outer.update(Sha256::digest(&image[piece.start as usize..piece.end as usize]));
        }
    }
    hex::encode(outer.finalize())
}

#[test]
fn written_bytes_equal_the_image_for_every_compression() {
    let t = TestImage::new();
    let want = t.bytes();
    for image in [&t.img, &t.zst, &t.xz] {
        let backing = t.path("card.img");
        fs::File::create(&backing).unwrap().set_len(80 * MIB).unwrap();
        let card = Loop::attach(&backing);
        let mut target = BlockTarget::open(&card.dev).unwrap();
        let report = flash_lib(image, &mut target).unwrap();
        drop(target);
        // cmp, the real tool, over the image's length.
        run(Cmd::new("cmp").arg("-n").arg(IMAGE_SIZE.to_string()).arg(&t.img).arg(&card.dev));
        assert_same(&card.read_all()[..want.len()], &want, &image.display().to_string());
        let map = t.map();
        assert_eq!(report.bytes_written, map.mapped_bytes());
        assert_eq!(report.bytes_verified, map.mapped_bytes());
        assert_eq!(report.bytes_skipped, IMAGE_SIZE - map.mapped_bytes());
        assert_eq!(report.ranges_checked_against_bmap, map.ranges.len());
        assert_eq!(report.image_sha256, sha256_hex(&want));
        assert_eq!(report.mapped_sha256_image, mapped_sha256(&want, &map));
        assert_eq!(report.mapped_sha256_device, mapped_sha256(&want, &map));
        assert!(report.bytes_written < IMAGE_SIZE / 4, "the image is sparse: {report:?}");
    }
}

#[test]
fn unmapped_ranges_keep_what_the_card_held() {
    let t = TestImage::uncompressed();
    let backing = t.path("card.img");
    pattern_file(&backing, 80 * MIB, 0xA5);
    let card = Loop::attach(&backing);
    let mut target = BlockTarget::open(&card.dev).unwrap();
    flash_lib(&t.img, &mut target).unwrap();
    drop(target);
    let got = card.read_all();
    let want = t.bytes();
    let map = t.map();
    let mut checked = 0;
    for (start, end) in unmapped(&map) {
        // The first MiB is zeroed before writing (the old table must go).
        let start = start.max(HEAD) as usize;
        if start >= end as usize {
            continue;
        }
        assert!(
            got[start..end as usize].iter().all(|b| *b == 0xA5),
            "unmapped bytes {start}..{end} were overwritten"
        );
        checked += end as usize - start;
    }
    assert!(checked as u64 > 40 * MIB, "most of the image is unmapped: {checked}");
    for r in &map.ranges {
        let b = map.byte_range(r);
        assert_same(
            &got[b.start as usize..b.end as usize],
            &want[b.start as usize..b.end as usize],
            "a mapped range",
        );
    }
    // Past the image the card is untouched except its last MiB (old backup GPT).
    assert!(got[IMAGE_SIZE as usize..(80 * MIB - MIB) as usize].iter().all(|b| *b == 0xA5));
    assert!(got[(80 * MIB - MIB) as usize..].iter().all(|b| *b == 0));
}

#[test]
fn corruption_between_write_and_verify_is_detected() {
    let t = TestImage::uncompressed();
    let map = t.map();
    let last = map.byte_range(map.ranges.last().unwrap());
    let backing = t.path("card.img");
    pattern_file(&backing, 80 * MIB, 0xA5);
    let card = Loop::attach(&backing);
    let mut target = FailingTarget::new(BlockTarget::open(&card.dev).unwrap(), Failure::CorruptAt(last.start + 7));
    let err = format!("{:#}", flash_lib(&t.img, &mut target).unwrap_err());
    drop(target);
    assert!(err.contains("read-back mismatch"), "{err}");
    assert!(err.contains(&format!("{}..{}", last.start, last.end)), "{err}");
    assert!(err.contains("first MiB"), "{err}");
    assert!(
        card.read_all()[..HEAD as usize].iter().all(|b| *b == 0),
        "the partition table was written after a failed verify"
    );
}

#[test]
fn a_damaged_image_is_caught_by_the_block_map() {
    let t = TestImage::uncompressed();
    let map = t.map();
    let mut bytes = t.bytes();
    let r = map.byte_range(&map.ranges[map.ranges.len() - 2]);
    bytes[r.start as usize + 100] ^= 1;
    let bad = t.path("bad.img");
    fs::write(&bad, &bytes).unwrap();
    let out = t.path("out.img");
    pattern_file(&out, IMAGE_SIZE, 0x5A);
    let source = ImageSource::open(&bad, Some(&t.bmap), &SystemRunner).unwrap();
    let mut target = FileTarget::open_existing(&out).unwrap();
    let err = format!(
        "{:#}",
        write_image(source.stream().unwrap(), &source.bmap, &mut target, &Progress::quiet()).unwrap_err()
    );
    assert!(err.contains("does not match its block map"), "{err}");
    assert!(
        err.contains(&format!(
            "blocks {}-{}",
            map.ranges[map.ranges.len() - 2].first,
            map.ranges[map.ranges.len() - 2].last
        )),
        "{err}"
    );
    assert!(fs::read(&out).unwrap()[..HEAD as usize].iter().all(|b| *b == 0));
}

#[test]
fn a_write_failing_part_way_leaves_the_first_mib_zeroed() {
    let t = TestImage::new();
    // The card held a bootable image before: a valid GPT in its first MiB.
    let card = t.path("card.img");
    fs::copy(&t.img, &card).unwrap();
    run(Cmd::new("sfdisk").arg("-J").arg(&card));
    let mut target = FailingTarget::new(FileTarget::open_existing(&card).unwrap(), Failure::AfterBytes(HEAD + 2 * MIB));
    let err = format!("{:#}", flash_lib(&t.zst, &mut target).unwrap_err());
    assert!(err.contains("injected I/O error"), "{err}");
    let bytes = fs::read(&card).unwrap();
    assert!(bytes[..HEAD as usize].iter().all(|b| *b == 0), "first MiB not zeroed");
    let sfdisk = piha_runner::Runner::run(&SystemRunner, &Cmd::new("sfdisk").arg("-J").arg(&card));
    assert!(
        sfdisk.is_err() || String::from_utf8_lossy(&sfdisk.unwrap().stdout).trim().is_empty(),
        "a partition table survived"
    );
}

/// What a refused target held before: every byte 0xA5.
const HELD: u8 = 0xA5;

/// A loop device of `size` bytes holding `HELD`, for a flash that must be refused.
fn held_card(t: &TestImage, name: &str, size: u64) -> Loop {
    let backing = t.path(name);
    pattern_file(&backing, size, HELD);
    Loop::attach(&backing)
}

/// `flash IMAGE --device DEV --node NODE EXTRA...`.
fn flash_device<'a>(img: &'a Path, dev: &'a Path, node: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["flash", img.to_str().unwrap(), "--device", dev.to_str().unwrap(), "--node", node];
    args.extend_from_slice(extra);
    args
}

fn assert_nothing_written(bytes: &[u8], size: u64, what: &str) {
    assert_eq!(bytes.len() as u64, size, "{what} changed size");
    assert!(
        bytes.iter().all(|b| *b == HELD),
        "{what} was written although the flash was refused"
    );
}

#[test]
fn a_regular_file_is_refused_as_not_a_block_device() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let plain = t.path("plain");
    pattern_file(&plain, 80 * MIB, HELD);
    let err = failed(&lab.piha(&flash_device(&t.img, &plain, "cp1", &["--yes"])));
    assert!(err.contains("is not a block device") && err.contains("--to-file"), "{err}");
    assert_nothing_written(&fs::read(&plain).unwrap(), 80 * MIB, "the file");
}

#[test]
fn a_device_smaller_than_the_image_is_refused() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let card = held_card(&t, "small.img", 32 * MIB);
    let err = failed(&lab.piha(&flash_device(&t.img, &card.dev, "cp1", &["--yes", "--allow-non-removable"])));
    assert!(
        err.contains(&format!("refusing to write {}; nothing was written", card.dev.display()))
            && err.contains("is 32.00 MiB but the image needs 64.00 MiB; use a bigger card"),
        "{err}"
    );
    assert_nothing_written(&card.read_all(), 32 * MIB, "the small device");
}

#[test]
fn a_fixed_disk_is_refused_without_allow_non_removable() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    // A loop device is neither removable nor on USB or MMC.
    let card = held_card(&t, "fixed.img", 80 * MIB);
    let err = failed(&lab.piha(&flash_device(&t.img, &card.dev, "cp1", &["--yes"])));
    assert!(
        err.contains("is not a removable disk") && err.contains("add --allow-non-removable"),
        "{err}"
    );
    assert!(!err.contains("bigger card"), "{err}");
    assert_nothing_written(&card.read_all(), 80 * MIB, "the fixed disk");
}

#[test]
fn every_reason_to_refuse_is_listed_at_once() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let card = held_card(&t, "small.img", 32 * MIB);
    let err = failed(&lab.piha(&flash_device(&t.img, &card.dev, "cp1", &["--yes"])));
    assert!(
        err.contains("is not a removable disk") && err.contains("use a bigger card"),
        "{err}"
    );
    assert_nothing_written(&card.read_all(), 32 * MIB, "the small fixed disk");
}

/// An ext4 filesystem on `dev` (this host's kernel has no vfat driver),
/// initialised in full up front so the kernel does not keep writing inode
/// tables and the journal in the background once it is mounted.
fn mkfs_ext4(dev: &Path) {
    run(Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(dev));
}

#[test]
fn a_mounted_device_is_refused() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let card = held_card(&t, "fs.img", 80 * MIB);
    mkfs_ext4(&card.dev);
    let mount = Mount::new(&card.dev);
    let before = card.read_all();
    let err = failed(&lab.piha(&flash_device(&t.img, &card.dev, "cp1", &["--yes", "--allow-non-removable"])));
    let mount_point = mount.dir.path().display().to_string();
    assert!(err.contains(&format!("is mounted at {mount_point}; unmount it first")), "{err}");
    assert_same(&card.read_all(), &before, "the mounted device");
    drop(mount);
    run(Cmd::new("e2fsck").args(["-fn"]).arg(&card.dev));
}

/// The disk the system runs from, made on a loop device: in a private mount
/// namespace its filesystem is mounted over /boot and piha runs there, so it
/// sees the loop device as holding /boot. Doing it this way tests the check on
/// any host, whatever its root filesystem sits on, and a broken check writes a
/// loop device instead of the host's own disk.
#[test]
fn the_disk_the_system_runs_from_is_refused() {
    assert!(
        Path::new("/boot").is_dir(),
        "this test mounts over /boot in a private mount namespace; the host has no /boot"
    );
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let card = held_card(&t, "boot.img", 80 * MIB);
    mkfs_ext4(&card.dev);
    let before = card.read_all();
    let piha = flash_device(&t.img, &card.dev, "cp1", &["--yes", "--allow-non-removable"]);
    // Read-only, so the mount itself leaves the device as it was.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -o ro "$1" /boot && shift && exec "$@""#)
        .arg("sh")
        .arg(&card.dev)
        .arg(env!("CARGO_BIN_EXE_piha"))
        .arg(piha[0])
        .arg("--cluster")
        .arg(lab.cluster())
        .args(&piha[1..])
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(
        err.contains(&format!(
            "{} holds the running system (/, /boot or /boot/efi live on it); piha never writes the disk it runs from",
            card.dev.display()
        )),
        "{err}"
    );
    assert_same(&card.read_all(), &before, "the system's disk");
}

#[test]
fn without_a_terminal_flash_asks_for_yes() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let card = held_card(&t, "free.img", 80 * MIB);
    // Lab::piha gives piha no stdin, so it has no terminal to ask on.
    let err = failed(&lab.piha(&flash_device(&t.img, &card.dev, "cp1", &["--allow-non-removable"])));
    assert!(
        err.contains("there is no terminal to confirm on; add --yes") && err.contains("Nothing was written"),
        "{err}"
    );
    assert_nothing_written(&card.read_all(), 80 * MIB, "the device");
}

#[test]
fn an_unknown_node_is_refused() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let card = held_card(&t, "free.img", 80 * MIB);
    let err = failed(&lab.piha(&flash_device(&t.img, &card.dev, "nope", &["--yes", "--allow-non-removable"])));
    assert!(
        err.contains("there is no node named \"nope\"") && err.contains("nothing was written"),
        "{err}"
    );
    assert_nothing_written(&card.read_all(), 80 * MIB, "the device");
}

/// The card's bytes equal the image everywhere but inside PIHA-CFG, which
/// holds the node's stamp.
fn assert_image_outside_cfg(got: &[u8], want: &[u8]) {
    let (s, e) = (CFG_START as usize, (CFG_START + CFG_SIZE) as usize);
    assert_same(&got[..s], &want[..s], "before PIHA-CFG");
    assert_same(&got[e..want.len()], &want[e..], "after PIHA-CFG");
}

/// The node a card is stamped for: `node.name` of the node.yaml on the
/// PIHA-CFG at `offset` (every node.yaml names all nodes among its peers).
fn stamped_node(file: &Path, offset: u64) -> String {
    let spec = format!("{}@@{offset}", file.display());
    let yaml = String::from_utf8(run(Cmd::new("mtype").args(["-i", &spec, "::node.yaml"]))).unwrap();
    NodeConfig::parse(Path::new("node.yaml"), &yaml).unwrap().node.name
}

/// A target that records every write in order (offset, length, whether it
/// carried anything but zeros), and can refuse the stamp's one write of the
/// whole PIHA-CFG filesystem (a card pulled out while it is stamped).
struct Recorder<T: WriteTarget> {
    inner: T,
    writes: std::sync::Mutex<Vec<(u64, u64, bool)>>,
    fail_stamp: bool,
}

impl<T: WriteTarget> WriteTarget for Recorder<T> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        if self.fail_stamp && offset == CFG_START && buf.len() as u64 == CFG_SIZE {
            return Err(std::io::Error::other("injected: the card was pulled out"));
        }
        self.writes
            .lock()
            .unwrap()
            .push((offset, buf.len() as u64, buf.iter().any(|b| *b != 0)));
        self.inner.write_at(offset, buf)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn read_back(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_back(offset, buf)
    }
}

/// `piha flash`'s order: the image's body, then the stamp, and only then the
/// first MiB with the partition table; a stamp that fails leaves that MiB
/// zeroed, so the card never looks bootable while it is incomplete.
#[test]
fn flash_stamps_the_card_before_its_partition_table_goes_on() {
    let t = TestImage::new();
    let lab = Lab::new();
    let cluster_path = lab.cluster();
    let cluster = piha_config::cluster::ClusterFile::load(&cluster_path).unwrap();
    let secrets_dir = piha::card::secrets::default_dir(&cluster_path);
    let id = piha::card::stamp::Identity {
        cluster: &cluster,
        cluster_path: &cluster_path,
        secrets_dir: &secrets_dir,
        node: "cp2",
    };
    let source = ImageSource::open(&t.zst, None, &SystemRunner).unwrap();
    for fail_stamp in [false, true] {
        let backing = t.path("card.img");
        pattern_file(&backing, 80 * MIB, 0);
        let mut target = Recorder {
            inner: FileTarget::open_existing(&backing).unwrap(),
            writes: std::sync::Mutex::new(Vec::new()),
            fail_stamp,
        };
        let result = piha::card::flash::write_card(id, &source, &mut target, &Progress::quiet(), Verify::ReadBack);
        let writes = target.writes.into_inner().unwrap();
        let head_data = writes.iter().position(|&(o, _, data)| o < HEAD && data);
        if fail_stamp {
            let Err(err) = result else { panic!("the stamp did not fail") };
            let err = format!("{err:#}");
            assert!(err.contains("partition table was not written and the card is blank"), "{err}");
            assert_eq!(head_data, None, "the first MiB got data: {writes:?}");
            let got = fs::read(&backing).unwrap();
            assert!(got[..HEAD as usize].iter().all(|b| *b == 0), "the first MiB is not zeroed");
        } else {
            result.expect("flash");
            let stamp = writes
                .iter()
                .rposition(|&(o, l, _)| o == CFG_START && l == CFG_SIZE)
                .expect("the stamp's write");
            let head = head_data.expect("the partition table was written");
            assert!(
                stamp < head,
                "the stamp (write {stamp}) went on after the table (write {head}): {writes:?}"
            );
            assert_eq!(stamped_node(&backing, CFG_START), "cp2");
        }
    }
}

#[test]
fn cli_flashes_a_loop_device_stamps_it_and_records_it() {
    let t = TestImage::new();
    let lab = Lab::new();
    // A blank card: unmapped ranges then read as the image's zeros.
    let backing = t.path("card.img");
    pattern_file(&backing, 96 * MIB, 0);
    let card = Loop::attach(&backing);
    let out = ok(&lab.piha(&[
        "flash",
        t.zst.to_str().unwrap(),
        "--device",
        card.dev.to_str().unwrap(),
        "--node",
        "cp2",
        "--yes",
        "--allow-non-removable",
        "--json",
    ]));
    // --json prints the summary and nothing else on stdout.
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node"], "cp2");
    assert_eq!(v["stamped"], true);
    assert_eq!(v["image_sha256"], sha256_hex(&t.bytes()));
    assert_eq!(v["bytes_written"], t.map().mapped_bytes());
    assert_eq!(v["mapped_sha256_image"], mapped_sha256(&t.bytes(), &t.map()));
    assert_eq!(v["mapped_sha256_device"], mapped_sha256(&t.bytes(), &t.map()));

    let got = card.read_all();
    assert_image_outside_cfg(&got, &t.bytes());
    assert_eq!(stamped_node(&card.dev, CFG_START), "cp2");
    // The kernel sees the new partitions, and the stamped one checks clean.
    let sys = Path::new("/sys/class/block").join(card.name());
    assert!(sys.join(format!("{}p2", card.name())).exists(), "partitions not re-read");
    run(Cmd::new("fsck.vfat").arg("-n").arg(format!("{}p2", card.dev.display())));

    let ledger = Ledger::load(&ledger_path(&lab.cluster())).unwrap();
    assert_eq!(ledger.entries.len(), 1);
    assert_eq!(ledger.entries[0].node, "cp2");
    assert_eq!(ledger.entries[0].device, card.dev.display().to_string());
    assert_eq!(ledger.entries[0].image_sha256, sha256_hex(&t.bytes()));

    // `piha stamp` alone still re-personalises the flashed card, after
    // printing which device it is about to write.
    drop(card);
    let card = Loop::attach(&backing);
    let out = lab.piha(&["stamp", "--node", "w1", "--allow-non-removable", card.dev.to_str().unwrap()]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("piha: target {}: ", card.dev.display())) && stderr.contains("serial") && stderr.contains("96.00 MiB"),
        "{stderr}"
    );
    assert!(stdout.starts_with("stamped w1 (worker) onto "), "{stdout}");
    assert_eq!(stamped_node(&card.dev, CFG_START), "w1");
}

/// `stamp --node NODE EXTRA... DEV`.
fn stamp_device<'a>(dev: &'a Path, node: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["stamp", "--node", node];
    args.extend_from_slice(extra);
    args.push(dev.to_str().unwrap());
    args
}

#[test]
fn stamp_refuses_a_fixed_disk_without_allow_non_removable() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let card = held_card(&t, "fixed.img", 80 * MIB);
    let err = failed(&lab.piha(&stamp_device(&card.dev, "cp1", &[])));
    assert!(
        err.contains(&format!("refusing to write {}; nothing was written", card.dev.display()))
            && err.contains("is not a removable disk")
            && err.contains("add --allow-non-removable"),
        "{err}"
    );
    assert_nothing_written(&card.read_all(), 80 * MIB, "the fixed disk");
}

#[test]
fn stamp_refuses_a_mounted_device() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let card = held_card(&t, "fs.img", 80 * MIB);
    mkfs_ext4(&card.dev);
    let mount = Mount::new(&card.dev);
    let before = card.read_all();
    let err = failed(&lab.piha(&stamp_device(&card.dev, "cp1", &["--allow-non-removable"])));
    let mount_point = mount.dir.path().display().to_string();
    assert!(err.contains(&format!("is mounted at {mount_point}; unmount it first")), "{err}");
    assert_same(&card.read_all(), &before, "the mounted device");
}

#[test]
fn stamp_refuses_a_partition() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let backing = t.path("card.img");
    fs::copy(&t.img, &backing).unwrap();
    let card = Loop::attach(&backing);
    run(Cmd::new("partx").arg("-a").arg(&card.dev));
    let part = PathBuf::from(format!("{}p2", card.dev.display()));
    let before = card.read_all();
    let err = failed(&lab.piha(&stamp_device(&part, "cp1", &["--allow-non-removable"])));
    assert!(err.contains("is a partition; give the whole disk"), "{err}");
    assert_same(&card.read_all(), &before, "the card");
}

#[test]
fn stamp_refuses_a_truncated_image_and_leaves_it_as_it_was() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let cut = t.path("cut.img");
    let mut bytes = t.bytes();
    // The table still names PIHA-CFG, but the file ends inside it.
    bytes.truncate((CFG_START + CFG_SIZE / 2) as usize);
    fs::write(&cut, &bytes).unwrap();
    let err = failed(&lab.piha(&["stamp", "--node", "cp1", cut.to_str().unwrap()]));
    assert!(err.contains("truncated") || err.contains("beyond the end"), "{err}");
    assert_same(&fs::read(&cut).unwrap(), &bytes, "the truncated image");
}

#[test]
fn cli_to_file_writes_a_sparse_stamped_image() {
    let t = TestImage::new();
    let lab = Lab::new();
    let out = t.path("vm.img");
    ok(&lab.piha(&[
        "flash",
        t.xz.to_str().unwrap(),
        "--to-file",
        out.to_str().unwrap(),
        "--node",
        "w1",
        "--yes",
    ]));
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), IMAGE_SIZE);
    // Allocated: the mapped ranges, the stamp, and the zeroed first MiB, not 64 MiB.
    assert!(
        meta.blocks() * 512 < 16 * MIB + CFG_SIZE,
        "not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    assert_image_outside_cfg(&fs::read(&out).unwrap(), &t.bytes());
    assert_eq!(stamped_node(&out, CFG_START), "w1");
    run(Cmd::new("sfdisk").arg("-J").arg(&out));
}

/// Bad sources: a file that is not an image, and a `.img.zst` cut short.
/// Neither may touch an existing `--to-file` target, and each says why.
#[test]
fn a_bad_source_leaves_an_existing_file_target_as_it_was() {
    let t = TestImage::new();
    let lab = Lab::new();
    let target = t.path("vm.img");
    let before = b"the image flashed yesterday".to_vec();
    let not_an_image = t.path("notes.img");
    fs::write(&not_an_image, vec![b'x'; 4 * MIB as usize]).unwrap();
    let zst = fs::read(&t.zst).unwrap();
    let cut = t.path("cut.img.zst");
    fs::write(&cut, &zst[..zst.len() / 2]).unwrap();
    for (source, says) in [(&not_an_image, "is not a disk image"), (&cut, "truncated")] {
        fs::write(&target, &before).unwrap();
        let err = failed(&lab.piha(&[
            "flash",
            source.to_str().unwrap(),
            "--to-file",
            target.to_str().unwrap(),
            "--node",
            "w1",
            "--yes",
        ]));
        assert!(err.contains(says), "{}: {err}", source.display());
        assert_eq!(fs::read(&target).unwrap(), before, "{}: the target was changed", source.display());
        let leftovers: Vec<_> = fs::read_dir(t.path("."))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".vm.img"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// A source that ends early, found only mid-stream on a block device: the
/// card is left blank, and the message says so.
#[test]
fn a_source_truncated_mid_stream_leaves_a_blank_card_and_says_so() {
    let t = TestImage::new();
    let lab = Lab::new();
    let zst = fs::read(&t.zst).unwrap();
    let cut = t.path("cut.img.zst");
    // Past the first sector, so only the stream finds the end.
    fs::write(&cut, &zst[..zst.len() * 3 / 4]).unwrap();
    let backing = t.path("card.img");
    pattern_file(&backing, 96 * MIB, 0xA5);
    let card = Loop::attach(&backing);
    let err = failed(&lab.piha(&[
        "flash",
        cut.to_str().unwrap(),
        "--device",
        card.dev.to_str().unwrap(),
        "--node",
        "cp2",
        "--yes",
        "--allow-non-removable",
    ]));
    assert!(err.contains("is blank now") && err.contains("flash it again"), "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(
        card.read_all()[..HEAD as usize].iter().all(|b| *b == 0),
        "the first MiB is not zeroed"
    );
}

#[test]
fn cli_batch_flashes_one_card_per_node_in_cluster_order() {
    let t = TestImage::uncompressed();
    let lab = Lab::new();
    let a = t.path("a.img");
    let b = t.path("b.img");
    pattern_file(&a, 80 * MIB, 0);
    pattern_file(&b, 80 * MIB, 0);
    let (da, db) = (Loop::attach(&a), Loop::attach(&b));
    // Pairs given out of order; the ledger follows the cluster file (cp1 before w1).
    let pairs = format!("w1={},cp1={}", db.dev.display(), da.dev.display());
    ok(&lab.piha(&[
        "flash",
        t.img.to_str().unwrap(),
        "--all",
        "--pairs",
        &pairs,
        "--yes",
        "--allow-non-removable",
    ]));
    let ledger = Ledger::load(&ledger_path(&lab.cluster())).unwrap();
    let nodes: Vec<&str> = ledger.entries.iter().map(|e| e.node.as_str()).collect();
    assert_eq!(nodes, ["cp1", "w1"]);
    assert_eq!(stamped_node(&da.dev, CFG_START), "cp1");
    assert_eq!(stamped_node(&db.dev, CFG_START), "w1");
    let err = failed(&lab.piha(&["flash", t.img.to_str().unwrap(), "--all", "--pairs", "nope=/dev/null", "--yes"]));
    assert!(err.contains("\"nope\""), "{err}");
    let err = failed(&lab.piha(&["flash", t.img.to_str().unwrap(), "--all", "--yes"]));
    assert!(err.contains("--pairs"), "{err}");
}

#[test]
fn no_verify_writes_the_same_bytes_and_reads_nothing_back() {
    let t = TestImage::new();
    let out = t.path("out.img");
    let source = ImageSource::open(&t.zst, None, &SystemRunner).unwrap();
    let mut target = FileTarget::create(&out, IMAGE_SIZE).unwrap();
    let report = write_image_with(source.stream().unwrap(), &source.bmap, &mut target, &Progress::quiet(), Verify::Off).unwrap();
    drop(target);
    assert_same(&fs::read(&out).unwrap(), &t.bytes(), "--no-verify output");
    assert_eq!(report.bytes_verified, 0);
    assert_eq!(report.mapped_sha256_device, "");
    assert_eq!(report.ranges_checked_against_bmap, t.map().ranges.len());
}
