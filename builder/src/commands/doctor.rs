//! `piha doctor`: every host tool piha and its tests use, with its version and
//! how to install it.

use anyhow::Context;
use piha_runner::SystemRunner;

use crate::arch::Arch;
use crate::cli::DoctorOpts;
use crate::host::doctor::{Need, agent_way, all_checks, render};
use crate::pipeline::agent::cross;

pub fn run(opts: &DoctorOpts) -> anyhow::Result<()> {
    let runner = SystemRunner;
    let mut checks = all_checks(&runner);
    checks.push(agent_way(&cross::detect(Arch::Arm64, &runner).to_string()));
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&checks).context("serializing the checks")?);
    } else {
        print!("{}", render(&checks));
    }
    let missing: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok && c.need == Need::Required)
        .map(|c| c.name.as_str())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!("required host tools are missing: {} (see the fixes above)", missing.join(", "));
    }
    Ok(())
}
