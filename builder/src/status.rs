//! (placeholder until implemented)

use crate::cli::StatusOpts;

pub fn run(_opts: &StatusOpts) -> anyhow::Result<()> {
    anyhow::bail!("`piha status` is not available yet")
}
