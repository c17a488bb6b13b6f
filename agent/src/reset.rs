//! `piha-agent reset`: forget every recorded step (removes state.json), so
//! the next run does them all again. It does not undo what the steps did: on
//! a node that ran kubeadm, the next run finds kubeadm's files and runs
//! `kubeadm reset -f` before init/join, which needs the secrets on the card
//! again (re-stamp it; they are removed once a node is done).

use crate::cli::ResetOpts;
use crate::paths::{DEFAULT_CONFIG_DIR, Paths};
use crate::state::State;
use piha_atomic as atomic;

pub fn run(opts: &ResetOpts) -> anyhow::Result<()> {
    // Only the root matters here; state.json lives on the node, not the card.
    let paths = Paths::new(&opts.root, DEFAULT_CONFIG_DIR);
    let path = paths.state_file();
    if !path.exists() {
        println!("nothing to reset: {} does not exist", path.display());
        return Ok(());
    }
    // Read it first to tell what is forgotten; an unreadable file is removed all the same.
    let summary = match State::load(&path) {
        Ok(state) => {
            let done = state.done_steps();
            let who = state
                .identity
                .as_ref()
                .map(|i| i.describe())
                .unwrap_or_else(|| "no identity".to_string());
            format!(
                "{who}; steps done: {}",
                if done.is_empty() { "none".to_string() } else { done.join(", ") }
            )
        }
        Err(e) => format!("unreadable ({e:#})"),
    };
    std::fs::remove_file(&path).map_err(|e| anyhow::anyhow!("removing {}: {e}", path.display()))?;
    atomic::sync_dir(path.parent().unwrap_or(&paths.root)).map_err(|e| anyhow::anyhow!("syncing {}: {e}", path.display()))?;
    println!("removed {} ({summary})", path.display());
    println!("the next run of piha-agent does every step again");
    Ok(())
}
