//! `piha`: parse the command line, then hand each subcommand to one function.

use std::process::ExitCode;

use clap::Parser;

use piha::cli::{Cli, Command};
use piha::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    piha::logging::init(cli.verbose);
    let result = match cli.command {
        Command::Init(o) => commands::init::run(&o),
        Command::RotateSecrets(o) => commands::init::rotate(&o),
        Command::Validate(o) => commands::validate::run(&o),
        Command::Render(o) => commands::render::run(&o),
        Command::Stamp(o) => commands::stamp::run(&o),
        Command::Build(o) => commands::build::run(&o),
        Command::Flash(o) => commands::flash::run(&o),
        Command::Doctor(o) => commands::doctor::run(&o),
        Command::Status(o) => commands::status::run(&o),
        Command::Kubeconfig(o) => commands::kubeconfig::run(&o),
        Command::Lab(o) => commands::lab::run(&o),
        Command::Completions(o) => commands::docs::completions(&o),
        Command::Man(o) => commands::docs::man(&o),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("piha: {e:#}");
            ExitCode::FAILURE
        }
    }
}
