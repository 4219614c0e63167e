//! The `kvfs` binary: parse flags, set up logging, run, turn the outcome into an exit code.
//! Run as `mount.kvfs` (a symlink), it is mount(8)'s helper instead (`mount_helper`).

use clap::Parser;
use kvfs::cli::{Cli, Command};

/// kvfs at info; the SDK logs every request at info, which is ours to say once, at warn.
const DEFAULT_LOG: &str = "info,azure_core=warn,azure_identity=warn,typespec_client_core=warn,azure_security_keyvault_secrets=warn";

fn main() -> std::process::ExitCode {
    let mut argv = std::env::args_os();
    if argv
        .next()
        .is_some_and(|name| kvfs::mount_helper::invoked_as_helper(&name))
    {
        return kvfs::mount_helper::main(argv.collect());
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        // Colour codes only for a terminal: not in the journal or the fstab helper's log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Mount(args) => kvfs::run::mount(*args),
        #[cfg(feature = "emulator")]
        Command::Demo(args) => kvfs::run::demo(*args),
        #[cfg(feature = "emulator")]
        Command::Emulator(args) => kvfs::run::emulator(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kvfs: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
