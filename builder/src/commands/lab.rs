//! `piha lab`: the options into the lab library, its tables printed.

use std::time::Duration;

use anyhow::bail;
use piha_runner::SystemRunner;

use crate::cli::{LabCommand, LabDirArg, LabOpts, LabUpOpts};
use crate::lab::dir::LabDir;
use crate::lab::state::LabState;
use crate::lab::up::{UpOptions, require_root};
use crate::lab::{check, down, net, nodes, reflash, timeserver, up, vm};

pub fn run(opts: &LabOpts) -> anyhow::Result<()> {
    match &opts.command {
        LabCommand::Up(o) => run_up(o),
        LabCommand::Status { dir, json } => status(dir, *json),
        LabCommand::Stop { dir, node, hard } => stop(dir, node, *hard),
        LabCommand::Start { dir, node } => start(dir, node),
        LabCommand::Down { dir } => run_down(dir),
        LabCommand::Reflash {
            dir,
            node,
            cluster,
            timeout,
            no_wait,
            json,
        } => run_reflash(
            dir,
            node,
            cluster.as_deref(),
            (!*no_wait).then(|| Duration::from_secs(timeout * 60)),
            *json,
        ),
        LabCommand::Check { dir, json } => run_check(dir, *json),
        LabCommand::ServeTime { address } => timeserver::serve(*address),
    }
}

fn lab_dir(d: &LabDirArg) -> anyhow::Result<LabDir> {
    LabDir::new(&d.dir)
}

fn run_up(o: &LabUpOpts) -> anyhow::Result<()> {
    let dir = lab_dir(&o.dir)?;
    let opts = UpOptions {
        cluster: o.cluster.cluster.clone(),
        secrets: o.cluster.secrets_dir(),
        profile: o.profile,
        as_amd64: o.as_amd64,
        only: o.nodes.clone(),
        images: o.image.clone(),
        accel: o.accel,
        cpus: o.cpus,
        memory_mib: o.memory,
        disk_grow_mib: o.disk_grow,
        timeout: Duration::from_secs(o.timeout * 60),
        mirror: o.mirror.clone(),
        k8s_bundle: o.k8s_bundle.clone(),
        cache_dir: o.cache_dir.clone(),
    };
    let rows = up::up(&dir, &opts, &SystemRunner)?;
    print!("{}", nodes::table(&rows));
    let failed: Vec<&str> = rows.iter().filter(|r| r.phase != "done").map(|r| r.name.as_str()).collect();
    if !failed.is_empty() {
        bail!(
            "the lab is up, but {} did not finish: `piha lab status --dir {}` and the consoles under {}",
            failed.join(", "),
            dir.root().display(),
            dir.nodes().display()
        );
    }
    Ok(())
}

fn loaded(dir: &LabDir) -> anyhow::Result<LabState> {
    LabState::existing(dir)
}

fn status(d: &LabDirArg, json: bool) -> anyhow::Result<()> {
    let dir = lab_dir(d)?;
    let state = loaded(&dir)?;
    let rows = nodes::over_ssh(&SystemRunner, &dir, &state);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", nodes::table(&rows));
    }
    Ok(())
}

fn stop(d: &LabDirArg, node: &str, hard: bool) -> anyhow::Result<()> {
    require_root()?;
    let dir = lab_dir(d)?;
    let state = loaded(&dir)?;
    let n = state.node(node)?;
    if !vm::running(&dir, &n.name) {
        println!("{node} is not running");
        return Ok(());
    }
    if hard {
        vm::power_cut(&dir, &n.name)?;
        println!("{node}: power cut");
    } else {
        vm::shut_down(&dir, &n.name)?;
        println!("{node}: shut down");
    }
    Ok(())
}

fn start(d: &LabDirArg, node: &str) -> anyhow::Result<()> {
    require_root()?;
    let dir = lab_dir(d)?;
    let state = loaded(&dir)?;
    let n = state.node(node)?;
    if vm::running(&dir, &n.name) {
        println!("{node} is already running");
        return Ok(());
    }
    if !net::exists(&SystemRunner, &state.namespace) {
        bail!(
            "the lab's network {} is gone (was the host rebooted?); `piha lab down --dir {}` and `piha lab up` again",
            state.namespace,
            dir.root().display()
        );
    }
    vm::power_on(&SystemRunner, &n.argv)?;
    println!("{node}: powered on");
    Ok(())
}

fn run_reflash(d: &LabDirArg, node: &str, cluster: Option<&std::path::Path>, wait: Option<Duration>, json: bool) -> anyhow::Result<()> {
    let dir = lab_dir(d)?;
    let r = reflash::reflash(&dir, node, cluster, wait, &SystemRunner)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", reflash::summary(&r));
    }
    if r.phase != "done" && wait.is_some() {
        bail!(
            "{node} did not come back: `piha lab status --dir {}` and its console",
            dir.root().display()
        );
    }
    Ok(())
}

fn run_down(d: &LabDirArg) -> anyhow::Result<()> {
    require_root()?;
    let dir = lab_dir(d)?;
    let removed = down::clean(&dir, &SystemRunner)?;
    println!("lab in {}: {}", dir.root().display(), removed.summary());
    Ok(())
}

fn run_check(d: &LabDirArg, json: bool) -> anyhow::Result<()> {
    let dir = lab_dir(d)?;
    let rows = check::check(&dir, &SystemRunner)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", check::table(&rows));
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!("{failed} of {} checks failed", rows.len());
    }
    Ok(())
}
