//! `coordinator`: the incept control plane. Launches runs, lists them, prints resolved configs,
//! measures the models and the machine. The flags are in [`cli`]; this file dispatches.

mod bench;
mod cli;
mod compare;
mod dashboard;
mod dataset;
mod launcher;
mod models;
mod predict;
mod progress;
mod rendezvous;
mod run;
mod runs;
mod service;
mod status;
mod store;
mod sweep;
mod tensorboard;
mod tls;

use std::process::ExitCode;

use clap::Parser;
use incept_common::collective::bucket;
use incept_common::data::pack::PackOptions;
use incept_common::resolve;

use crate::cli::{BenchCommand, Cli, Command, DatasetCommand, ModelsCommand};

/// The incept version and the commit this binary was built from: each run records it, and
/// `compare` reports it.
pub const CODE_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("INCEPT_COMMIT"),
    ")"
);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Worker(args) = cli.command {
        return incept_worker::main_with(args);
    }
    incept_common::logging::init("warn");
    if only_prints(&cli.command) {
        end_quietly_on_closed_pipe();
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Launch {
            experiment,
            resume,
            run_id,
            token_file,
            overrides,
            state_dir,
        } => {
            let start = match (&experiment, &resume) {
                (_, Some(run_id)) => run::Start::Resume { run_id },
                (Some(experiment), None) => run::Start::New {
                    experiment,
                    overrides: &overrides,
                    run_id: run_id.as_deref(),
                },
                (None, None) => unreachable!("clap requires an experiment or --resume"),
            };
            let token = token_file
                .as_deref()
                .map(incept_worker::read_token_file)
                .transpose()?;
            follow(start, &state_dir, token)
        }
        Command::Eval {
            run_id,
            weights,
            arch,
            data,
            crops,
            raw,
            workers,
            overrides,
            state_dir,
        } => {
            let weights = match (&run_id, &weights, arch) {
                (Some(run_id), None, _) => run::Weights::Run(run_id),
                (None, Some(path), Some(arch)) => run::Weights::File { path, arch },
                _ => unreachable!("clap requires a run id or --weights with --arch"),
            };
            let mut layers = data.as_deref().map(data_overrides).unwrap_or_default();
            layers.extend(overrides);
            let request = run::EvalRequest {
                weights,
                overrides: &layers,
                crops,
                raw,
                workers,
            };
            follow(run::Start::Eval(&request), &state_dir, None)
        }
        Command::Predict(args) => {
            predict::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            experiment,
            overrides,
        } => {
            print!("{}", resolve::load(&experiment, &overrides)?.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { run_id, state_dir } => {
            status::show(&state_dir, run_id.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard { state_dir, bind } => {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(dashboard::serve(&state_dir, &bind))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep(args) => sweep::run(&args),
        Command::Compare(args) => {
            compare::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { state_dir } => {
            runs::list(&state_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models {
            action: None,
            arch,
            num_classes,
        } => {
            models::list(arch, num_classes)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models {
            action:
                Some(ModelsCommand::Import {
                    arch,
                    from,
                    out,
                    num_classes,
                    width,
                    blocks,
                }),
            ..
        } => {
            let blocks = blocks
                .map(|b| {
                    <[usize; 3]>::try_from(b.as_slice())
                        .map_err(|_| anyhow::anyhow!("--blocks takes three counts, got {b:?}"))
                })
                .transpose()?;
            let target = models::import_target(arch, num_classes, width, blocks)?;
            models::import(&target, &from, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { what } => {
            match what {
                BenchCommand::NcclInplace { len, bucket_mib } => {
                    bench::nccl_inplace::run(len, bucket::mib_to_bytes(bucket_mib))?
                }
                BenchCommand::Step(step) => bench::step::run(&step)?,
                BenchCommand::Data(data) => bench::data::run(&data)?,
                BenchCommand::Dashboard(dashboard) => bench::dashboard::run(&dashboard)?,
                BenchCommand::ControlPlane(control) => bench::control_plane::run(&control)?,
                BenchCommand::Allreduce(allreduce) => bench::allreduce::run(&allreduce)?,
                BenchCommand::AllreduceRank(job) => bench::allreduce_rank::run(&job)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dataset { action } => {
            match action {
                DatasetCommand::Pack {
                    from,
                    val_labels,
                    out,
                    shards,
                    val_shards,
                    seed,
                } => dataset::pack(
                    &from,
                    val_labels.as_deref(),
                    &out,
                    &PackOptions {
                        train_shards: shards,
                        validation_shards: val_shards.unwrap_or((shards / 8).max(1)),
                        seed,
                    },
                )?,
                DatasetCommand::Index { dir } => dataset::index(&dir)?,
                DatasetCommand::Inspect { dir } => dataset::inspect(&dir)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(_) => unreachable!("handled before logging is set up"),
    }
}

/// Starts a run (or an evaluation) and follows it to the end.
fn follow(
    start: run::Start,
    state_dir: &std::path::Path,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run::launch(start, state_dir, token))
}

/// `--data SOURCE[:PATH]` as `data.source` and `data.path` overrides.
fn data_overrides(spec: &str) -> Vec<String> {
    match spec.split_once(':') {
        Some((source, path)) => vec![format!("data.source={source}"), format!("data.path={path}")],
        None => vec![format!("data.source={spec}")],
    }
}

/// Commands that only print to stdout and hold no socket: a reader that goes away (`| head`)
/// ends them, as it ends `ls`.
fn only_prints(command: &Command) -> bool {
    matches!(
        command,
        Command::Config { .. }
            | Command::Compare(_)
            | Command::Runs { .. }
            | Command::Status { .. }
            | Command::Models { action: None, .. }
            | Command::Dataset {
                action: DatasetCommand::Inspect { .. }
            }
    )
}

/// Restores the default SIGPIPE action, which Rust's runtime sets to "ignore": a write into a
/// closed pipe then ends the process silently instead of panicking in `println!`. Only for
/// [`only_prints`] commands: training processes must see a dead peer's socket as an error.
fn end_quietly_on_closed_pipe() {
    // SAFETY: called before any thread is spawned; SIG_DFL is a valid action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
