//! `coordinator`: the incept control plane. Launches runs, lists them, prints resolved configs.

mod bench;
mod dataset;
mod launcher;
mod models;
mod progress;
mod rendezvous;
mod run;
mod service;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use incept_common::collective::WireFormat;
use incept_common::config::{self, DeviceKind};
use incept_common::data::pack::PackOptions;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Distributed training orchestrator for the Inception family"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a run from an experiment file and follow it to the end.
    Launch {
        /// Experiment TOML, e.g. experiments/quickstart.toml.
        #[arg(required_unless_present = "resume", conflicts_with = "resume")]
        experiment: Option<PathBuf>,
        /// Continue a stopped run from its latest valid committed checkpoint.
        #[arg(long, value_name = "RUN_ID", conflicts_with = "overrides")]
        resume: Option<String>,
        /// Override a key: --set train.batch_size=16 (repeatable; applied after INCEPT__* env vars).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Where runs, checkpoints, logs and the run database live.
        #[arg(long, default_value_os_t = run::default_state_dir())]
        state_dir: PathBuf,
    },
    /// Print an experiment as resolved from file, environment and overrides.
    Config {
        experiment: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Act as a worker (what the local launcher runs when no `worker` binary is installed).
    #[command(hide = true)]
    Worker(incept_worker::WorkerArgs),
    /// The architectures this build knows: parameters, MACs, input size, stage shapes.
    Models {
        #[command(subcommand)]
        action: Option<ModelsCommand>,
        /// Only this architecture.
        #[arg(long)]
        arch: Option<String>,
        #[arg(long, default_value_t = 1000)]
        num_classes: usize,
    },
    /// Datasets: pack ILSVRC folders into TFRecord shards, index shards, inspect an index.
    Dataset {
        #[command(subcommand)]
        action: DatasetCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// List the runs of a state directory.
    Runs {
        #[arg(long, default_value_os_t = run::default_state_dir())]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ModelsCommand {
    /// Convert a timm checkpoint (safetensors) into incept weights for `model.init_from`.
    Import {
        #[arg(long)]
        arch: String,
        /// timm state dict saved with safetensors.
        #[arg(long = "from")]
        from: PathBuf,
        /// Where to write the incept weights (safetensors keyed by incept's module paths).
        #[arg(long)]
        out: PathBuf,
        /// Classes of the checkpoint's classifier (timm: 1000; TF-slim ports: 1001).
        #[arg(long, default_value_t = 1000)]
        num_classes: usize,
        /// Channel multiplier the checkpoint was made with.
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// Block counts the checkpoint was made with, e.g. 10,20,9 (default: the reference).
        #[arg(long, value_delimiter = ',')]
        blocks: Option<Vec<usize>>,
    },
}

#[derive(Subcommand, Debug)]
enum DatasetCommand {
    /// Write an ILSVRC folder (train/<wnid>/*.JPEG, val/) as TFRecord shards plus index.json.
    Pack {
        /// The ILSVRC-layout folder.
        #[arg(long = "from")]
        from: PathBuf,
        /// Ground truth of a flat val/: one wnid per image, in file-name order.
        #[arg(long)]
        val_labels: Option<PathBuf>,
        /// Output folder (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Training shards (the paper's setup: 1024).
        #[arg(long, default_value_t = 1024)]
        shards: usize,
        /// Validation shards (default: shards / 8, at least 1; the paper's setup: 128).
        #[arg(long)]
        val_shards: Option<usize>,
        /// Seeds the order of images across shards: same seed, same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Verify every record of train-*/validation-* shards made elsewhere and write index.json.
    Index { dir: PathBuf },
    /// Print a shard folder's index: shards, images, bytes, class balance.
    Inspect { dir: PathBuf },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// On a GPU: all-reduce a flat tensor through NCCL in its own device memory, bucket by
    /// bucket, and check every value (needs --features cuda, a GPU and libnccl).
    NcclInplace {
        /// Values in the flat tensor.
        #[arg(long, default_value_t = 10_000_000)]
        len: usize,
        /// Bucket size in MiB (fractions allowed).
        #[arg(long, default_value_t = incept_common::collective::bucket::DEFAULT_BUCKET_MIB)]
        bucket_mib: f64,
    },
    /// Training-step images/s and peak memory (forward, loss, backward, optimizer).
    Step {
        #[arg(long, default_value = "inception_resnet_v2")]
        arch: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 75)]
        image_size: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// What incept computes on: cpu, cuda (GPU LOCAL_RANK) or auto.
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        /// Also run this PyTorch script with the same settings (e.g.
        /// experiments/baselines/bench_step_torch.py) and print both rows.
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// Input-pipeline images/s: decode + Inception crop + flip + resize + normalise.
    Data {
        /// An ILSVRC-layout folder (its train/ JPEGs are used), e.g. one made by
        /// experiments/baselines/make_bench_images.py.
        #[arg(long)]
        path: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 299)]
        image_size: usize,
        /// Timed passes over the files (after one warm-up pass).
        #[arg(long, default_value_t = 10)]
        passes: usize,
        /// Also run this PIL + torchvision script on the same files (e.g.
        /// experiments/baselines/bench_data_torch.py) and print both rows.
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// All-reduce time, algbw and busbw per size across real rank processes (as nccl-tests).
    Allreduce {
        /// Rank processes on this machine.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Bytes per all-reduce: a doubling range `1KiB..256MiB` or a list `4,28,4KiB`.
        #[arg(long, default_value = "1KiB..256MiB", value_parser = bench::allreduce::parse_sizes)]
        sizes: std::vec::Vec<usize>,
        /// Wire format: f32, f16 or bf16.
        #[arg(long, default_value_t = WireFormat::F32)]
        wire: WireFormat,
        /// Deadline of every collective operation.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Timed iterations per size (0: about 1 GiB per size, 5 to 500).
        #[arg(long, default_value_t = 0)]
        iters: usize,
        /// Verify every operation (sum/mean in each wire format, broadcast, barrier) on every
        /// size instead of timing.
        #[arg(long)]
        check: bool,
        /// Also run this torch.distributed Gloo script with the same sizes and processes (e.g.
        /// experiments/baselines/bench_allreduce_gloo.py) and print both side by side.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Also measure loopback TCP bandwidth with iperf3.
        #[arg(long)]
        iperf3: bool,
    },
    /// One rank process of `bench allreduce` (spawned by it).
    #[command(hide = true)]
    AllreduceRank {
        #[arg(long)]
        rank: usize,
        #[arg(long)]
        world: usize,
        #[arg(long, value_parser = bench::allreduce::parse_sizes)]
        sizes: std::vec::Vec<usize>,
        #[arg(long, default_value_t = WireFormat::F32)]
        wire: WireFormat,
        #[arg(long)]
        timeout_s: u64,
        #[arg(long, default_value_t = 0)]
        iters: usize,
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Worker(args) = cli.command {
        return incept_worker::main_with(args);
    }
    incept_common::logging::init("warn");
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
            overrides,
            state_dir,
        } => {
            let start = match (&experiment, &resume) {
                (_, Some(run_id)) => run::Start::Resume { run_id },
                (Some(experiment), None) => run::Start::New {
                    experiment,
                    overrides: &overrides,
                },
                (None, None) => unreachable!("clap requires an experiment or --resume"),
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run::launch(start, &state_dir))
        }
        Command::Config {
            experiment,
            overrides,
        } => {
            print!("{}", config::load(&experiment, &overrides)?.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { state_dir } => {
            list_runs(&state_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models {
            action: None,
            arch,
            num_classes,
        } => {
            models::list(arch.as_deref(), num_classes)?;
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
            let target = models::import_target(&arch, num_classes, width, blocks)?;
            models::import(&target, &from, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchCommand::NcclInplace { len, bucket_mib },
        } => {
            bench::nccl_inplace::run(
                len,
                incept_common::collective::bucket::mib_to_bytes(bucket_mib),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchCommand::Step {
                    arch,
                    batch,
                    image_size,
                    steps,
                    warmup,
                    device,
                    compare,
                },
        } => {
            bench::step::run(&bench::step::StepBench {
                arch: &arch,
                batch,
                image_size,
                steps,
                warmup,
                device: device.into(),
                compare: compare.as_deref(),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchCommand::Data {
                    path,
                    threads,
                    image_size,
                    passes,
                    compare,
                },
        } => {
            bench::data::run(&bench::data::DataBench {
                path: &path,
                threads,
                image_size,
                passes,
                compare: compare.as_deref(),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchCommand::Allreduce {
                    workers,
                    sizes,
                    wire,
                    timeout_s,
                    iters,
                    check,
                    compare,
                    iperf3,
                },
        } => {
            bench::allreduce::run(&bench::allreduce::AllReduceBench {
                workers,
                sizes,
                wire,
                timeout: Duration::from_secs(timeout_s),
                iters,
                check,
                compare: compare.as_deref(),
                iperf3,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what:
                BenchCommand::AllreduceRank {
                    rank,
                    world,
                    sizes,
                    wire,
                    timeout_s,
                    iters,
                    check,
                },
        } => {
            bench::allreduce_rank::run(&bench::allreduce_rank::RankJob {
                rank,
                world,
                sizes,
                wire,
                timeout: Duration::from_secs(timeout_s),
                check,
                iters,
            })?;
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

fn list_runs(state_dir: &std::path::Path) -> anyhow::Result<()> {
    let db = state_dir.join(run::DATABASE);
    if !db.is_file() {
        anyhow::bail!("no run database at {}", db.display());
    }
    let runs = store::Store::open(&db)?.runs()?;
    println!(
        "{:<44} {:<12} {:>5} {:>13} {:>8}",
        "run", "status", "world", "steps", "top-1"
    );
    for r in runs {
        let top1 = r
            .val_top1
            .map_or("-".into(), |v| format!("{:.2}%", 100.0 * v));
        let steps = format!("{}/{}", r.steps_done.unwrap_or(0), r.total_steps);
        println!(
            "{:<44} {:<12} {:>5} {:>13} {:>8}",
            r.id, r.status, r.world_size, steps, top1
        );
    }
    Ok(())
}

/// `--device` values, as `cluster.device` takes them.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
}

impl From<DeviceArg> for DeviceKind {
    fn from(arg: DeviceArg) -> Self {
        match arg {
            DeviceArg::Cpu => DeviceKind::Cpu,
            DeviceArg::Cuda => DeviceKind::Cuda,
            DeviceArg::Auto => DeviceKind::Auto,
        }
    }
}
