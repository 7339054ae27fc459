//! The appliance image's side of Keel (see `images/`): `keel appliance
//! setup` turns keel.yaml into this machine's network, name and the
//! settings `keel run` starts with; `keel appliance banner` writes the
//! console banner. Both run as root from systemd units, before and after
//! `keel.service`.

pub mod banner;
pub mod settings;
pub mod setup;

use std::io::Read;
use std::process::ExitCode;

use crate::cli::ApplianceCommand;

/// Runs an `keel appliance` subcommand.
pub fn run(command: ApplianceCommand) -> ExitCode {
    let result = match command {
        ApplianceCommand::Check { file } => {
            let checked = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|text| settings::Settings::parse(&text));
            match checked {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!(
                    "{}",
                    e.lines()
                        .map(|l| format!("{}: {l}", file.display()))
                        .collect::<Vec<_>>()
                        .join("\n")
                )),
            }
        }
        ApplianceCommand::Setup => setup::run(),
        ApplianceCommand::Banner => banner::write(&banner::Paths::default()).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `keel hash-password`: the argon2 hash of the password on stdin.
pub fn hash_password_stdin() -> ExitCode {
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("keel: cannot read the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = text.trim_end_matches(['\n', '\r']);
    if password.chars().count() < 12 {
        eprintln!("keel: use at least 12 characters");
        return ExitCode::FAILURE;
    }
    match keel_web_core::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::FAILURE
        }
    }
}
