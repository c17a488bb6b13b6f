//! (placeholder until implemented)

use crate::cli::ValidateOpts;

pub fn run(_opts: &ValidateOpts) -> anyhow::Result<()> {
    anyhow::bail!("`piha validate` is not available yet")
}
