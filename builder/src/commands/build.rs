//! `piha build`: the options into [`pipeline::Options`], the build, the summary printed.

use anyhow::Context;
use piha_runner::SystemRunner;

use crate::cli::BuildOpts;
use crate::pipeline::{self, Options, Summary};
use crate::progress::{Progress, human_bytes};

pub fn run(opts: &BuildOpts) -> anyhow::Result<()> {
    let progress = Progress::auto();
    let summary = pipeline::build(&options(opts), &SystemRunner, &progress)?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&summary).context("serializing the summary")?);
    } else {
        println!("{}", human_summary(&summary));
    }
    Ok(())
}

fn options(o: &BuildOpts) -> Options {
    Options {
        board: o.board.clone(),
        distro: o.distro.clone(),
        cluster: o.cluster.clone(),
        out: o.out.clone(),
        profile: o.profile,
        k8s_bundle: o.k8s_bundle.clone(),
        mirror: o.mirror.clone(),
        cache_dir: o.cache_dir.clone(),
        no_cache: o.no_cache,
    }
}

fn human_summary(s: &Summary) -> String {
    let t = &s.timings;
    format!(
        "built {} ({}, {} packages)\n  image      {} ({} apparent)\n  compressed {} ({})\n  bmap       {}\n  sums       {}\n  manifest   {}\n  input hash {}\n  rootfs     {} cache, key {}\n  seconds    preflight {:.1}, rootfs {:.1}, agent {:.1}, customize {:.1}, assemble {:.1}, package {:.1}, total {:.1}",
        s.board,
        s.distro,
        s.packages,
        s.image.display(),
        human_bytes(s.image_size),
        s.compressed.display(),
        human_bytes(s.compressed_size),
        s.bmap.display(),
        s.sha256sums.display(),
        s.manifest.display(),
        s.input_hash,
        s.rootfs_cache,
        &s.rootfs.key[..16.min(s.rootfs.key.len())],
        t.preflight,
        t.rootfs,
        t.agent,
        t.customize,
        t.assemble,
        t.package,
        t.total
    )
}
