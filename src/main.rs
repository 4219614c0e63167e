//! The `kvfs` binary: parse flags, set up logging, run, turn the outcome into an exit code.
//! Run as `mount.kvfs` (a symlink), it is mount(8)'s helper instead (`mount_helper`).
//! Every heap block is zeroed when freed (`hardening::ZeroOnFree`), and `mount` and `demo`
//! lock and hide their memory (`hardening::protect`) before they fetch anything.

use clap::Parser;
use kvfs::cli::{Cli, Command};

#[global_allocator]
static ALLOCATOR: kvfs::hardening::ZeroOnFree = kvfs::hardening::ZERO_ON_FREE;

fn main() -> std::process::ExitCode {
    let mut argv = std::env::args_os();
    if argv
        .next()
        .is_some_and(|name| kvfs::mount_helper::invoked_as_helper(&name))
    {
        return kvfs::mount_helper::main(argv.collect());
    }
    let cli = Cli::parse();
    kvfs::logs::init(cli.log_format);
    let protected = match &cli.command {
        Command::Mount(args) => kvfs::hardening::protect(args.options.require_mlock).map(drop),
        #[cfg(feature = "emulator")]
        Command::Demo(args) => kvfs::hardening::protect(args.options.require_mlock).map(drop),
        #[cfg(feature = "emulator")]
        Command::Emulator(_) => Ok(()),
    };
    if let Err(err) = protected {
        eprintln!("kvfs: {err}");
        return std::process::ExitCode::FAILURE;
    }
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
