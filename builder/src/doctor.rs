//! (placeholder until implemented)

use crate::cli::DoctorOpts;

pub fn run(_opts: &DoctorOpts) -> anyhow::Result<()> {
    anyhow::bail!("`piha doctor` is not available yet")
}
