//! Times `piha::pipeline::assemble::assemble` (stages 3–4 of `piha build`) on a root tar,
//! for `bench/assemble.sh`, which runs genimage on the same inputs.
//!
//! An example rather than a CLI subcommand (the CLI has no hidden commands) or
//! an `#[ignore]` test (those run unoptimised and cannot take arguments): it is
//! built with `--release` like the real `piha`, and calls the same public API
//! `piha build` calls.
//!
//! ```text
//! cargo run --release --example assemble-bench -- ROOT_TAR ESP_DIR CFG_DIR OUT_DIR [--package] [--zstd-levels 3,6,10]
//! ```
//!
//! Prints `key=value` lines: timings in seconds, and the sizes and identifiers
//! genimage needs to build the same layout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use piha::arch::Arch;
use piha::image::fat::{FatFile, FatType};
use piha::image::{compress, ext4};
use piha::pipeline::assemble::{Content, DiskLayout, PartKind, PartSpec, TableKind, assemble};
use piha::pipeline::package::package;
use piha_runner::SystemRunner;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        bail!("usage: assemble-bench ROOT_TAR ESP_DIR CFG_DIR OUT_DIR [--package] [--zstd-levels 3,6,10]");
    }
    let tar = PathBuf::from(&args[0]);
    let esp_dir = PathBuf::from(&args[1]);
    let cfg_dir = PathBuf::from(&args[2]);
    let out = PathBuf::from(&args[3]);
    let do_package = args.iter().any(|a| a == "--package");
    let levels: Vec<i32> = match args.iter().position(|a| a == "--zstd-levels") {
        Some(i) => args
            .get(i + 1)
            .context("--zstd-levels needs a list")?
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    std::fs::create_dir_all(&out)?;

    let mut files = Vec::new();
    read_tree(&esp_dir, "", &mut files)?;
    let mut cfg_files = Vec::new();
    read_tree(&cfg_dir, "", &mut cfg_files)?;
    let layout = DiskLayout {
        table: TableKind::Gpt,
        arch: Arch::Amd64,
        partitions: vec![
            PartSpec {
                name: "ESP".into(),
                kind: PartKind::Esp,
                size_bytes: Some(128 << 20),
                content: Content::Fat {
                    label: "ESP".into(),
                    fat_type: Some(FatType::Fat32),
                    files,
                },
            },
            PartSpec {
                name: "PIHA-CFG".into(),
                kind: PartKind::Config,
                size_bytes: Some(16 << 20),
                content: Content::Fat {
                    label: "PIHA-CFG".into(),
                    fat_type: None,
                    files: cfg_files,
                },
            },
            PartSpec {
                name: "piha-root".into(),
                kind: PartKind::Root,
                size_bytes: None,
                content: Content::Ext4 {
                    label: "piha-root".into(),
                    tar: tar.clone(),
                    free_bytes: 1 << 30,
                },
            },
        ],
        seed: [1; 32],
        epoch: piha::pipeline::epoch::DEFAULT_SOURCE_DATE_EPOCH,
    };

    let image = out.join("piha.img");
    let started = Instant::now();
    let assembled = assemble(&SystemRunner, &layout, &image, &|m| {
        eprintln!("  {:6.2}s {m}", started.elapsed().as_secs_f64())
    })?;
    println!("piha_assemble_s={:.2}", started.elapsed().as_secs_f64());

    // What genimage needs to make the same disk (the same mke2fs inputs).
    let scan_started = Instant::now();
    let stats = ext4::scan_tar(&tar)?;
    println!("tar_scan_s={:.2}", scan_started.elapsed().as_secs_f64());
    let sizing = ext4::size_for(&stats, 1 << 30);
    let root = &assembled.partitions[2];
    println!("root_size_bytes={}", root.size);
    println!("root_inodes={}", sizing.inodes);
    println!("root_uuid={}", layout.fs_uuid(3));
    println!("esp_size_bytes={}", assembled.partitions[0].size);
    println!("cfg_size_bytes={}", assembled.partitions[1].size);
    println!("image_bytes={}", assembled.size);
    println!("fake_time={}", stats.newest_mtime);

    for level in levels {
        let dst = out.join(format!("level-{level}.img.zst"));
        let started = Instant::now();
        let z = compress::to_zstd(&image, &dst, level, &|_| {})?;
        println!(
            "zstd_level_{level}_s={:.2} zstd_level_{level}_bytes={}",
            started.elapsed().as_secs_f64(),
            z.output_bytes
        );
        std::fs::remove_file(&dst)?;
    }
    if do_package {
        let started = Instant::now();
        let art = package(&SystemRunner, &assembled, &out, &|m| eprintln!("  {m}"))?;
        println!("piha_package_s={:.2}", started.elapsed().as_secs_f64());
        println!("compressed_bytes={}", std::fs::metadata(&art.compressed)?.len());
    }
    Ok(())
}

/// Every file under `dir`, as FAT paths relative to it.
fn read_tree(dir: &Path, prefix: &str, out: &mut Vec<FatFile>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if e.file_type()?.is_dir() {
            read_tree(&e.path(), &path, out)?;
        } else {
            out.push(FatFile::new(
                path,
                std::fs::read(e.path()).with_context(|| format!("reading {}", e.path().display()))?,
            ));
        }
    }
    Ok(())
}
