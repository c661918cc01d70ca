//! `worker`: joins an incept run and trains one data-parallel replica (see the library docs).

use std::process::ExitCode;

use clap::Parser;
use incept_worker::WorkerArgs;

fn main() -> ExitCode {
    incept_worker::main_with(WorkerArgs::parse())
}
