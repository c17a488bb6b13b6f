//! (placeholder until implemented)

use crate::cli::StampOpts;

pub fn run(_opts: &StampOpts) -> anyhow::Result<()> {
    anyhow::bail!("`piha stamp` is not available yet")
}
