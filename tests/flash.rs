//! `piha flash` on loop devices and files: the bytes land, unmapped ranges are
//! left alone, every failure leaves the first MiB zeroed, and every refusal
//! happens before a byte is written. Needs root (losetup, mount).

mod support;

#[path = "flash/image.rs"]
mod image;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use image::{CFG_SIZE, CFG_START, IMAGE_SIZE, Lab, MIB, TestImage, assert_same, failed, ok, pattern_file, run, sha256_hex};
use piha::bmap::Bmap;
use piha::flash::ledger::{Ledger, ledger_path};
use piha::flash::source::ImageSource;
use piha::flash::target::{BlockTarget, FailingTarget, Failure, FileTarget, WriteTarget};
use piha::flash::write::{HEAD, Verify, WriteReport, write_image, write_image_with};
use piha::progress::Progress;
use piha_runner::{Cmd, SystemRunner};
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
        assert_eq!(report.mapped_sha256_image, report.mapped_sha256_device);
        assert!(report.bytes_written < IMAGE_SIZE / 4, "the image is sparse: {report:?}");
    }
}

#[test]
fn unmapped_ranges_keep_what_the_card_held() {
    let t = TestImage::new();
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
    let t = TestImage::new();
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
    let t = TestImage::new();
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

#[test]
fn refusals_happen_before_anything_is_written() {
    let t = TestImage::new();
    let lab = Lab::new();
    let img = t.img.to_str().unwrap();

    // A regular file is not a device.
    let plain = t.path("plain");
    pattern_file(&plain, 80 * MIB, 0xA5);
    let err = failed(&lab.piha(&["flash", img, "--device", plain.to_str().unwrap(), "--node", "cp1", "--yes"]));
    assert!(err.contains("not a block device") && err.contains("--to-file"), "{err}");

    // Too small.
    let small = t.path("small.img");
    pattern_file(&small, 32 * MIB, 0xA5);
    let small_dev = Loop::attach(&small);
    let err = failed(&lab.piha(&[
        "flash",
        img,
        "--device",
        small_dev.dev.to_str().unwrap(),
        "--node",
        "cp1",
        "--yes",
        "--allow-non-removable",
    ]));
    assert!(err.contains("bigger card"), "{err}");
    assert!(small_dev.read_all().iter().all(|b| *b == 0xA5), "a refused device was written");

    // Not removable (a loop device) without --allow-non-removable; every reason listed.
    let err = failed(&lab.piha(&["flash", img, "--device", small_dev.dev.to_str().unwrap(), "--node", "cp1", "--yes"]));
    assert!(err.contains("--allow-non-removable") && err.contains("bigger card"), "{err}");

    // Mounted (ext4: this host's kernel has no vfat driver).
    let fs_file = t.path("fs.img");
    fs::File::create(&fs_file).unwrap().set_len(80 * MIB).unwrap();
    let fs_dev = Loop::attach(&fs_file);
    run(Cmd::new("mkfs.ext4").args(["-q", "-F"]).arg(&fs_dev.dev));
    let mount = Mount::new(&fs_dev.dev);
    let before = fs_dev.read_all();
    let err = failed(&lab.piha(&[
        "flash",
        img,
        "--device",
        fs_dev.dev.to_str().unwrap(),
        "--node",
        "cp1",
        "--yes",
        "--allow-non-removable",
    ]));
    assert!(
        err.contains("is mounted at") && err.contains(&mount.dir.path().display().to_string()),
        "{err}"
    );
    assert!(
        fs_dev.read_all()[..HEAD as usize] == before[..HEAD as usize],
        "a mounted device was written"
    );
    drop(mount);
    run(Cmd::new("e2fsck").args(["-fn"]).arg(&fs_dev.dev));

    // The disk the system runs from.
    let root = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_src = root
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|r| r.split(' ').nth(1))
        .unwrap()
        .to_string();
    if root_src.starts_with("/dev/") {
        let err = failed(&lab.piha(&[
            "flash",
            img,
            "--device",
            &root_src,
            "--node",
            "cp1",
            "--yes",
            "--allow-non-removable",
        ]));
        assert!(err.contains("running system"), "{err}");
    }

    // No terminal and no --yes.
    let free = t.path("free.img");
    pattern_file(&free, 80 * MIB, 0xA5);
    let free_dev = Loop::attach(&free);
    let err = failed(&lab.piha(&[
        "flash",
        img,
        "--device",
        free_dev.dev.to_str().unwrap(),
        "--node",
        "cp1",
        "--allow-non-removable",
    ]));
    assert!(err.contains("no terminal") && err.contains("--yes"), "{err}");
    // An unknown node.
    let err = failed(&lab.piha(&[
        "flash",
        img,
        "--device",
        free_dev.dev.to_str().unwrap(),
        "--node",
        "nope",
        "--yes",
        "--allow-non-removable",
    ]));
    assert!(err.contains("no node named"), "{err}");
    assert!(free_dev.read_all().iter().all(|b| *b == 0xA5), "a refused device was written");
}

/// The card's bytes equal the image everywhere but inside PIHA-CFG, which
/// holds the node's stamp.
fn assert_image_outside_cfg(got: &[u8], want: &[u8]) {
    let (s, e) = (CFG_START as usize, (CFG_START + CFG_SIZE) as usize);
    assert_same(&got[..s], &want[..s], "before PIHA-CFG");
    assert_same(&got[e..want.len()], &want[e..], "after PIHA-CFG");
}

fn node_yaml_at(file: &Path, offset: u64) -> String {
    let spec = format!("{}@@{offset}", file.display());
    String::from_utf8(run(Cmd::new("mtype").args(["-i", &spec, "::node.yaml"]))).unwrap()
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
    // stamp prints its own line first; the JSON summary follows.
    let json = &out[out.find('{').unwrap()..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["node"], "cp2");
    assert_eq!(v["stamped"], true);
    assert_eq!(v["image_sha256"], sha256_hex(&t.bytes()));
    assert_eq!(v["bytes_written"], t.map().mapped_bytes());
    assert_eq!(v["mapped_sha256_image"], v["mapped_sha256_device"]);

    let got = card.read_all();
    assert_image_outside_cfg(&got, &t.bytes());
    assert!(node_yaml_at(&card.dev, CFG_START).contains("cp2"));
    // The kernel sees the new partitions, and the stamped one checks clean.
    let sys = Path::new("/sys/class/block").join(card.name());
    assert!(sys.join(format!("{}p2", card.name())).exists(), "partitions not re-read");
    run(Cmd::new("fsck.vfat").arg("-n").arg(format!("{}p2", card.dev.display())));

    let ledger = Ledger::load(&ledger_path(&lab.cluster())).unwrap();
    assert_eq!(ledger.entries.len(), 1);
    assert_eq!(ledger.entries[0].node, "cp2");
    assert_eq!(ledger.entries[0].device, card.dev.display().to_string());
    assert_eq!(ledger.entries[0].image_sha256, sha256_hex(&t.bytes()));

    // `piha stamp` alone still re-personalises the flashed card.
    drop(card);
    let card = Loop::attach(&backing);
    ok(&lab.piha(&["stamp", "--node", "w1", card.dev.to_str().unwrap()]));
    assert!(node_yaml_at(&card.dev, CFG_START).contains("w1"));
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
    assert!(node_yaml_at(&out, CFG_START).contains("w1"));
    run(Cmd::new("sfdisk").arg("-J").arg(&out));
}

#[test]
fn cli_batch_flashes_one_card_per_node_in_cluster_order() {
    let t = TestImage::new();
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
    assert!(node_yaml_at(&da.dev, CFG_START).contains("cp1"));
    assert!(node_yaml_at(&db.dev, CFG_START).contains("w1"));
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
