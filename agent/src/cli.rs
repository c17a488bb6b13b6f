//! Command-line definitions. `piha-agent` alone is `piha-agent run`, which
//! is what the unit starts on every boot.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::paths::DEFAULT_CONFIG_DIR;

#[derive(Debug, Parser)]
#[command(
    name = "piha-agent",
    version,
    about = "First-boot agent: turns a card stamped by `piha stamp` into a Kubernetes node"
)]
#[command(help_expected = true, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the steps not done yet (the default; what piha-agent.service runs).
    Run(RunOpts),
    /// Print the recorded state and the card's status.json.
    Status(StatusOpts),
    /// Forget every recorded step so the next run does them all again.
    Reset(ResetOpts),
    /// Read the card as the next boot would (node.yaml, its checksum, each
    /// secret's digest) and say whether it is complete; changes nothing.
    /// Exit status 2 for a card the agent would refuse.
    CheckCard(PathOpts),
    /// On a control plane: report when kubeadm's certificates expire (into
    /// the card's status.json) and renew them all once the first is due;
    /// what piha-certs.timer runs daily.
    Certs(CertsOpts),
}

#[derive(Debug, Clone, Args)]
pub struct CertsOpts {
    #[command(flatten)]
    pub paths: PathOpts,
    /// Renew once the first certificate expires within this many days.
    #[arg(long, value_name = "DAYS", default_value_t = crate::certs::DEFAULT_RENEW_BEFORE_DAYS)]
    pub renew_before: u64,
}

/// Where the node's files and the config partition are.
#[derive(Debug, Clone, Args)]
pub struct PathOpts {
    /// Root of the node's filesystem; everything the agent writes on the node goes under it.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Where the PIHA-CFG partition is mounted (not joined to --root).
    #[arg(long, default_value = DEFAULT_CONFIG_DIR)]
    pub config_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RunOpts {
    #[command(flatten)]
    pub paths: PathOpts,
    /// Test hook, not for nodes: log commands to <root>/var/lib/piha/commands.log instead of running them
    /// (canned answers from <root>/var/lib/piha/dry-run/<program>.stdout|.fail).
    #[arg(long, hide = true)]
    pub dry_run_commands: bool,
    /// Give up on a step after this many failed tries (exit status 1; the next
    /// boot starts again). Default: try again without limit, with pauses
    /// doubling from 5 s to 60 s.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tries: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusOpts {
    #[command(flatten)]
    pub paths: PathOpts,
    /// Print {"state": ..., "status": ...} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ResetOpts {
    /// Root of the node's filesystem.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bare_invocation_is_run_with_defaults() {
        let cli = Cli::parse_from(["piha-agent"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.run.paths.root, std::path::PathBuf::from("/"));
        assert_eq!(cli.run.paths.config_dir, std::path::PathBuf::from("/boot/piha"));
        let cli = Cli::parse_from(["piha-agent", "status", "--json", "--root", "/tmp/x"]);
        assert!(matches!(cli.command, Some(Command::Status(o)) if o.json && o.paths.root.ends_with("x")));
    }
}
