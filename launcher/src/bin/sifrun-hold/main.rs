//! `sifrun-hold`: the lean holder of a Slurm step's container. The SPANK
//! plugin runs it instead of `sifrun` (found beside `launcher=`) for a step
//! without an ECL whose image is a local file: the same `slurm-hold`
//! command line and protocol, built without signature verification and the
//! registry client, so its start loads neither OpenSSL nor sequoia. It
//! also serves a `docker://` image whose pinned digest the user's cache
//! holds (no site cache configured). A request for the ECL's path or any
//! other `docker://` image is refused (the plugin runs `sifrun` for those).
#![warn(clippy::too_many_lines)]

#[path = "../sifrun/hold_cmd.rs"]
mod hold_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sifrun-hold",
    version,
    about = "The lean holder of a Slurm step's container (started by the sifrun SPANK plugin)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set up a step's container and hold it for tasks to join; reads the
    /// plugin's request on standard input, answers on standard output
    SlurmHold(hold_cmd::HoldArgs),
}

fn main() {
    let Command::SlurmHold(args) = Cli::parse().command;
    std::process::exit(hold_cmd::run(&args, None));
}
