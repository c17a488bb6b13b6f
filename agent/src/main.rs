//! piha-agent: runs on every boot of a piha node (piha-agent.service) and
//! turns the identity stamped on its PIHA-CFG partition into a Kubernetes
//! node: identity, host preparation, container runtime, kubeadm init/join or
//! keepalived, then it scrubs the secrets from the card. Every step is
//! idempotent and recorded, so a power cut at any point resumes on the next boot.

mod agent;
mod api_wait;
mod certs;
mod check_card;
mod cli;
mod clock;
mod config_partition;
mod cpu;
mod crash;
mod dry_run;
mod existing_cluster;
mod files;
mod logging;
mod paths;
mod report;
mod reset;
mod retry;
mod show;
mod state;
mod steps;
#[cfg(test)]
mod testing;
mod units;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    logging::init(if matches!(command, Command::Run(_)) { "info" } else { "warn" });
    let result = match &command {
        Command::Run(opts) => agent::command(opts),
        Command::Status(opts) => show::run(opts).map(|()| ExitCode::SUCCESS),
        Command::Reset(opts) => reset::run(opts).map(|()| ExitCode::SUCCESS),
        Command::CheckCard(opts) => check_card::run(opts),
        Command::Certs(opts) => certs::command(opts).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("piha-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
