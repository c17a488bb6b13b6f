//! Shell completions and man pages, generated from the clap definitions.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsOpts, ManOpts};

pub fn completions(opts: &CompletionsOpts) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(opts.shell, &mut cmd, "piha", &mut std::io::stdout());
    Ok(())
}

pub fn man(opts: &ManOpts) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let cmd = Cli::command();
    write_page(&opts.out, "piha", cmd.clone())?;
    for sub in cmd.get_subcommands() {
        let name: &'static str = Box::leak(format!("piha-{}", sub.get_name()).into_boxed_str());
        write_page(&opts.out, name, sub.clone())?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &'static str, cmd: clap::Command) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.name(name))
        .render(&mut buf)
        .context("rendering man page")?;
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))
}
