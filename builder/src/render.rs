//! (placeholder until implemented)

use crate::cli::RenderOpts;

pub fn run(_opts: &RenderOpts) -> anyhow::Result<()> {
    anyhow::bail!("`piha render` is not available yet")
}
