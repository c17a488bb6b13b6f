//! (placeholder until implemented)

use crate::cli::BuildOpts;

pub fn run(_opts: &BuildOpts) -> anyhow::Result<()> {
    anyhow::bail!("`piha build` is not available yet")
}
