//! `piha validate`: every problem of a cluster file at once.

use crate::cli::ValidateOpts;
use crate::inputs::cluster::check;

pub fn run(opts: &ValidateOpts) -> anyhow::Result<()> {
    let path = &opts.cluster.cluster;
    let (_, problems) = check(path)?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&problems.0)?);
    } else {
        for p in &problems.0 {
            println!("{p}");
        }
    }
    if problems.has_errors() {
        anyhow::bail!(
            "{}: {} error(s)",
            path.display(),
            problems.0.iter().filter(|p| p.is_error()).count()
        );
    }
    if !opts.json {
        println!("{}: ok", path.display());
    }
    Ok(())
}
