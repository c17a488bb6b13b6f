//! (placeholder until implemented)

use crate::cli::{InitOpts, RotateSecretsOpts};

pub fn run(_opts: &InitOpts) -> anyhow::Result<()> {
    anyhow::bail!("`piha init` is not available yet")
}

pub fn rotate(_opts: &RotateSecretsOpts) -> anyhow::Result<()> {
    anyhow::bail!("`piha rotate-secrets` is not available yet")
}
