//! `piha`: parse the command line, then hand each subcommand to one function.

use std::process::ExitCode;

use clap::Parser;

use piha::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    piha::logging::init(cli.verbose);
    let result = match cli.command {
        Command::Init(o) => piha::init::run(&o),
        Command::RotateSecrets(o) => piha::init::rotate(&o),
        Command::Validate(o) => piha::validate::run(&o),
        Command::Render(o) => piha::render::run(&o),
        Command::Stamp(o) => piha::stamp::run(&o),
        Command::Build(o) => piha::commands::build::run(&o),
        Command::Flash(o) => piha::flash::run(&o),
        Command::Doctor(o) => piha::doctor::run(&o),
        Command::Status(o) => piha::status::run(&o),
        Command::Completions(o) => piha::docs::completions(&o),
        Command::Man(o) => piha::docs::man(&o),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("piha: {e:#}");
            ExitCode::FAILURE
        }
    }
}
