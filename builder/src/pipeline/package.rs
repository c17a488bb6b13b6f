//! Stage 4 of `piha build`, packaging: beside the assembled image, the
//! `.img.zst`, the `.bmap`, `SHA256SUMS` listing all three, and
//! `manifest.json` (what was built from what).

use std::path::{Path, PathBuf};

use anyhow::Context;
use piha_atomic::TempPath;
use piha_runner::{Cmd, Runner};
use sha2::{Digest, Sha256};

use crate::image::compress;
use crate::image::digest;
use crate::pipeline::assemble::Assembled;
use crate::pipeline::manifest::{Artifact, Manifest, Package};
use crate::pipeline::plan::Plan;

/// The files [`package`] leaves in its output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    pub image: PathBuf,
    pub compressed: PathBuf,
    pub bmap: PathBuf,
    pub sha256sums: PathBuf,
}

/// Makes the `.img.zst`, `.bmap` and `SHA256SUMS` for an assembled image in
/// `out_dir` (created if missing). The image is moved into `out_dir` if it is
/// elsewhere (through `runner` when that needs a copy); [`Artifacts::image`]
/// is where it is now. For `X.img` the files are `X.img.zst`, `X.bmap` (the
/// name `bmaptool copy` finds by itself for both `X.img` and `X.img.zst`) and
/// `SHA256SUMS` listing all three. Each is written under a temporary name and
/// renamed into place. zstd runs at [`compress::LEVEL`], which is fast: in
/// the benchmark level 15 made the file 17% smaller in sixty times the time.
pub fn package(runner: &dyn Runner, a: &Assembled, out_dir: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Artifacts> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let name = a
        .image
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", a.image.display()))?;
    let image = out_dir.join(name);
    if !same_file(&a.image, &image) {
        move_file(runner, &a.image, &image)?;
    }
    let stem = name.strip_suffix(".img").unwrap_or(name);
    let compressed = out_dir.join(format!("{stem}.img.zst"));
    let bmap = out_dir.join(format!("{stem}.bmap"));
    let sha256sums = out_dir.join(digest::FILE_NAME);

    progress(&format!("compressing {name} (zstd level {})", compress::LEVEL));
    let tmp = TempPath::new(&compressed).with_context(|| format!("naming a temporary file beside {}", compressed.display()))?;
    let z = compress::to_zstd(&image, tmp.path(), compress::LEVEL, progress)?;
    tmp.commit().with_context(|| format!("putting {} in place", compressed.display()))?;
    progress(&format!("{}: {} MiB", file_name(&compressed), z.output_bytes >> 20));

    progress(&format!("mapping {name}"));
    let xml = crate::image::bmap::Bmap::from_image(&image)?.to_xml();
    write_new(&bmap, xml.as_bytes())?;

    let sums = digest::render(&[
        (z.input_sha256, name.to_string()),
        (z.output_sha256, file_name(&compressed)),
        (hex::encode(Sha256::digest(xml.as_bytes())), file_name(&bmap)),
    ])?;
    write_new(&sha256sums, sums.as_bytes())?;
    Ok(Artifacts {
        image,
        compressed,
        bmap,
        sha256sums,
    })
}

/// What the manifest records of one build besides the plan.
#[derive(Debug, Clone, Copy)]
pub struct Built<'a> {
    pub input_hash: &'a str,
    pub rootfs_key: &'a str,
    pub packages: &'a [Package],
    pub artifacts: &'a Artifacts,
}

/// Writes `<cluster>-<board>.manifest.json` and, under the well-known name
/// tools look for, `manifest.json`, both in `out`; returns the first's path.
pub fn write_manifest(plan: &Plan, built: &Built, out: &Path) -> anyhow::Result<PathBuf> {
    let a = built.artifacts;
    let sums = read_sums(&a.sha256sums)?;
    let artifacts = [&a.image, &a.compressed, &a.bmap, &a.sha256sums]
        .into_iter()
        .map(|f| artifact(f, &sums))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cluster = &plan.req.cluster;
    let manifest = Manifest {
        piha_version: env!("CARGO_PKG_VERSION").to_string(),
        cluster: cluster.name.clone(),
        board: plan.req.board.name.clone(),
        distro: plan.req.distro.name.clone(),
        arch: plan.arch.deb().to_string(),
        profile: plan.req.profile,
        kubernetes_version: cluster.kubernetes.version.to_string(),
        runtime: cluster.kubernetes.runtime.as_str().to_string(),
        input_hash: built.input_hash.to_string(),
        rootfs_key: built.rootfs_key.to_string(),
        sources: plan.source_lines(),
        skipped: plan.skipped.clone(),
        packages: built.packages.to_vec(),
        artifacts,
    };
    let path = out.join(format!("{}-{}.manifest.json", cluster.name, plan.req.board.name));
    manifest.write(&path)?;
    manifest.write(&out.join("manifest.json"))?;
    Ok(path)
}

/// One file's name, size and SHA-256 (from `SHA256SUMS` when it is listed).
fn artifact(f: &Path, sums: &[(String, String)]) -> anyhow::Result<Artifact> {
    let name = file_name(f);
    let size = std::fs::metadata(f).with_context(|| format!("reading {}", f.display()))?.len();
    let sha256 = match sums.iter().find(|(_, n)| *n == name) {
        Some((h, _)) => h.clone(),
        None => digest::sha256_file(f)?,
    };
    Ok(Artifact { file: name, size, sha256 })
}

/// Lines of `SHA256SUMS`: (hash, file name).
fn read_sums(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once("  ").or_else(|| l.split_once(" *")))
        .map(|(h, n)| (h.to_string(), n.trim_start_matches('*').to_string()))
        .collect())
}

/// Writes `bytes` to `path` atomically.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    piha_atomic::write(path, bytes, None).with_context(|| format!("writing {}", path.display()))
}

/// Moves a file; across filesystems, copies it with its holes kept.
fn move_file(runner: &dyn Runner, from: &Path, to: &Path) -> anyhow::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = TempPath::new(to).with_context(|| format!("naming a temporary file beside {}", to.display()))?;
            runner.run(&Cmd::new("cp").arg("--sparse=always").arg(from).arg(tmp.path()))?;
            tmp.commit().with_context(|| format!("putting {} in place", to.display()))?;
            std::fs::remove_file(from).with_context(|| format!("removing {} after copying it", from.display()))
        }
        Err(e) => Err(e).with_context(|| format!("moving {} to {}", from.display(), to.display())),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
