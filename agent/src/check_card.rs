//! `piha-agent check-card`: reads the card as the next boot's read-config
//! does (node.yaml and its checksum line, the shared rules, each secret
//! against its digest) and says what it found. It changes nothing, not even
//! the secrets of a card it finds torn (a boot would scrub those).

use std::process::ExitCode;

use crate::cli::PathOpts;
use crate::config_partition;
use crate::paths::Paths;
use crate::state::State;

/// Exit status 0: a complete card, named on stdout; 2: a card the agent would
/// refuse, with the report.
pub fn run(opts: &PathOpts) -> anyhow::Result<ExitCode> {
    let paths = Paths::new(&opts.root, &opts.config_dir);
    let cfg = match config_partition::read_node(&paths) {
        Ok(cfg) => cfg,
        Err(report) => return Ok(refused(&report)),
    };
    let state = State::load(&paths.state_file())?;
    if let Err(report) = config_partition::check_secrets(&paths, &cfg, state.joined.is_some()) {
        return Ok(refused(&report));
    }
    let present = paths.card_secrets().exists();
    println!(
        "complete: node {} ({}) of cluster {}; {}",
        cfg.node.name,
        cfg.node.role.as_str(),
        cfg.cluster.name,
        match (cfg.card.secrets.len(), present) {
            (0, _) => "no secrets for this role".to_string(),
            (n, true) => format!("{n} secret file(s), each as stamped"),
            (n, false) => format!("its {n} secret file(s) already scrubbed after use"),
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn refused(report: &str) -> ExitCode {
    println!("refused: {report}");
    ExitCode::from(2)
}
