//! piha's `.bmap` against bmaptool (Debian `bmap-tools`), both ways: bmaptool
//! accepts piha's maps and produces the same bytes as `piha flash`; piha
//! accepts maps made by `bmaptool create` and they describe the same ranges.

// Tests run the binaries under test, QEMU and the host tools that check
// their output directly, as a user's shell would; clippy.toml's ban on
// Command::new is for piha's own code, which goes through piha_runner.
#![allow(clippy::disallowed_methods)]

mod support;

#[path = "flash/image.rs"]
mod image;

use std::fs;

use image::{IMAGE_SIZE, TestImage, run};
use piha::device::source::ImageSource;
use piha::device::target::FileTarget;
use piha::device::write::write_image;
use piha::image::bmap::Bmap;
use piha::progress::Progress;
use piha_runner::{Cmd, SystemRunner};

#[test]
fn bmaptool_create_and_from_image_agree() {
    let t = TestImage::new();
    let theirs_path = t.path("tool.bmap");
    run(Cmd::new("bmaptool").arg("create").arg("-o").arg(&theirs_path).arg(&t.img));
    let theirs = Bmap::load(&theirs_path).unwrap();
    let ours = Bmap::from_image(&t.img).unwrap();
    assert_eq!(theirs.image_size, ours.image_size);
    assert_eq!(theirs.block_size, ours.block_size);
    assert_eq!(theirs.blocks_count, ours.blocks_count);
    assert_eq!(theirs.mapped_blocks_count, ours.mapped_blocks_count);
    assert_eq!(theirs.ranges, ours.ranges, "same ranges and the same per-range sha256");
    // piha writes bmaptool's layout; with equal ranges the files are identical.
    assert_eq!(ours.to_xml(), fs::read_to_string(&theirs_path).unwrap());
    assert!(ours.mapped_blocks_count * ours.block_size < IMAGE_SIZE / 4);
}

#[test]
fn bmaptool_copy_with_pihas_bmap_equals_piha_flash() {
    let t = TestImage::new();
    for image in [&t.img, &t.zst, &t.xz] {
        let by_tool = t.path("by-tool.img");
        let _ = fs::remove_file(&by_tool);
        run(Cmd::new("bmaptool").arg("copy").arg("--bmap").arg(&t.bmap).arg(image).arg(&by_tool));
        let by_piha = t.path("by-piha.img");
        let source = ImageSource::open(image, None, &SystemRunner).unwrap();
        assert_eq!(source.bmap_path.as_deref(), Some(t.bmap.as_path()));
        let mut target = FileTarget::create(&by_piha, source.bmap.image_size).unwrap();
        write_image(source.stream().unwrap(), &source.bmap, &mut target, &Progress::quiet()).unwrap();
        drop(target);
        run(Cmd::new("cmp").arg(&by_tool).arg(&by_piha));
        run(Cmd::new("cmp").arg(&t.img).arg(&by_piha));
    }
}

#[test]
fn piha_flashes_with_a_bmap_made_by_bmaptool() {
    let t = TestImage::new();
    let theirs = t.path("tool.bmap");
    run(Cmd::new("bmaptool").arg("create").arg("-o").arg(&theirs).arg(&t.img));
    let out = t.path("out.img");
    let source = ImageSource::open(&t.zst, Some(&theirs), &SystemRunner).unwrap();
    let mut target = FileTarget::create(&out, IMAGE_SIZE).unwrap();
    let report = write_image(source.stream().unwrap(), &source.bmap, &mut target, &Progress::quiet()).unwrap();
    drop(target);
    assert_eq!(report.ranges_checked_against_bmap, source.bmap.ranges.len());
    run(Cmd::new("cmp").arg(&t.img).arg(&out));
}

#[test]
fn a_tampered_bmap_is_refused_by_both() {
    let t = TestImage::new();
    let text = fs::read_to_string(&t.bmap).unwrap();
    let map = t.map();
    let last = map.ranges.last().unwrap();
    let tampered = text.replace(
        &format!("> {}-{} <", last.first, last.last),
        &format!("> {}-{} <", last.first, last.last - 1),
    );
    assert_ne!(text, tampered);
    let bad = t.path("bad.bmap");
    fs::write(&bad, &tampered).unwrap();
    let err = format!("{:#}", Bmap::load(&bad).unwrap_err());
    assert!(err.contains("checksum does not match") && err.contains("bad.bmap"), "{err}");
    let by_tool = piha_runner::Runner::run(
        &SystemRunner,
        &Cmd::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(&bad)
            .arg(&t.img)
            .arg(t.path("x")),
    );
    assert!(by_tool.is_err(), "bmaptool accepted a tampered bmap");
}
