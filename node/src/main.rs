//! The `keel` binary: parse arguments, start logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use keel::cli::{Cli, Command};

/// mimalloc: the data plane allocates and frees many small blocks per
/// request, and glibc's allocator spent more instructions on them
/// (BENCHMARKS.md, callgrind).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file } => return keel::check_file(&file),
        Command::Run(args) => {
            let config = match keel::NodeConfig::try_from(*args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("keel: {e}");
                    return ExitCode::from(2);
                }
            };
            keel::init_logging(config.log_format);
            let token_in_argv = std::env::args_os()
                .any(|a| a == "--token" || a.to_string_lossy().starts_with("--token="));
            if token_in_argv {
                tracing::warn!(
                    "--token on the command line is visible to every user of this host (ps, \
                     /proc); pass the join token in KEEL_JOIN_TOKEN instead"
                );
            }
            control_runtime().and_then(|rt| rt.block_on(keel::run(config)))
        }
        Command::HashPassword => return keel::appliance::hash_password_stdin(),
        Command::Recover(args) => {
            runtime(Some(1)).and_then(|rt| rt.block_on(keel::recover::run(args)))
        }
        Command::Appliance { command } => return keel::appliance::run(command),
        Command::VipGuard => runtime(Some(1)).and_then(|rt| rt.block_on(keel::guard::run())),
        Command::Demo(args) => {
            keel::init_logging(args.log_format);
            runtime(None).and_then(|rt| rt.block_on(keel::demo::run(args)))
        }
        client => {
            return match runtime(Some(1)) {
                Ok(rt) => rt.block_on(keel::client::run(client)),
                Err(e) => {
                    eprintln!("keel: {}", report(&e));
                    ExitCode::FAILURE
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: some errors already spell out
/// their cause in their own message, and printing it again would repeat
/// every problem of an invalid config.
fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let line = cause.to_string();
        if !text.contains(&line) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&line);
        }
    }
    text
}

/// The control plane's runtime: two threads, whatever the data plane's
/// workers are doing (they run on threads of their own).
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("keel-control")
        .enable_all()
        .build()?)
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(b.enable_all().build()?)
}
