//! Handlebars templates rendered into the image: the `*.hbs` tree of rootfs
//! templates, the board's kernel command line and boot configuration, the
//! variables they all see, and the one engine every template goes through.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, bail};
use handlebars::Handlebars;

use super::overlay::{overlay_mode, walk};
use super::tree::{Data, Kind, Node, Tree, canonical, insert};
use crate::pipeline::plan::Plan;

/// The handlebars engine for every template piha renders into an image
/// (rootfs templates, boot configuration, board `rootfs_files`): strict, so a
/// misspelt variable is an error, and without HTML escaping, since the
/// outputs are configuration files.
pub fn template_engine() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb
}

pub(super) fn add_templates(tree: &mut Tree, dir: &Path, context: &serde_json::Value) -> anyhow::Result<()> {
    let hb = template_engine();
    for (rel, meta) in walk(dir)? {
        let full = dir.join(&rel);
        if meta.is_dir() {
            continue;
        }
        let Some(target) = rel.strip_suffix(".hbs") else {
            bail!(
                "{}: every file under {} must be a handlebars template ending in .hbs",
                full.display(),
                dir.display()
            );
        };
        let text = std::fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))?;
        let rendered = hb
            .render_template(&text, context)
            .with_context(|| format!("rendering {}", full.display()))?;
        let path = canonical(tree, target);
        let mode = overlay_mode(&path, meta.mode() & 0o111 != 0);
        insert(tree, path, Node::new(Kind::File(Data::Bytes(rendered.into_bytes())), mode));
    }
    Ok(())
}

/// Template variables for the rootfs templates and the boot configuration.
pub fn context(plan: &Plan, cmdline: &str) -> serde_json::Value {
    let b = &plan.req.board;
    serde_json::json!({
        "board": b.name,
        "distro": plan.req.distro.name,
        "family": plan.req.distro.family.as_str(),
        "arch": plan.arch.deb(),
        "profile": plan.req.profile.as_str(),
        "cluster": plan.req.cluster.name,
        "runtime": plan.req.cluster.kubernetes.runtime.as_str(),
        "kubernetes_version": plan.req.cluster.kubernetes.version,
        "network_renderer": serde_json::to_value(plan.req.distro.network_renderer).unwrap_or_default(),
        "root_label": b.partitions.root.label,
        "boot_label": b.partitions.boot.label,
        "boot_mount": b.partitions.boot.mount,
        "config_label": piha_config::node::CONFIG_LABEL,
        "cmdline": cmdline,
        "piha_version": env!("CARGO_PKG_VERSION"),
    })
}

/// The board's kernel command line with its variables filled in.
pub fn render_cmdline(plan: &Plan) -> anyhow::Result<String> {
    let ctx = context(plan, "");
    template_engine()
        .render_template(&plan.req.board.cmdline, &ctx)
        .with_context(|| format!("{}: cmdline", plan.req.board_file.display()))
        .map(|s| s.trim().to_string())
}

/// One of the board's generated boot files (`boot.config`), rendered.
pub fn render_boot_file(plan: &Plan, path: &str, template: &str, cmdline: &str) -> anyhow::Result<String> {
    template_engine()
        .render_template(template, &context(plan, cmdline))
        .with_context(|| format!("{}: boot.config.{path}", plan.req.board_file.display()))
}
