//! The command line: every subcommand and flag, as clap parses them. `main` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use incept_common::config::{Arch, Crops};

use crate::{bench, compare, predict, run, sweep};

#[derive(Parser, Debug)]
#[command(
    version = crate::CODE_VERSION,
    about = "Distributed training orchestrator for the Inception family"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a run from an experiment file and follow it to the end.
    Launch {
        /// Experiment TOML, e.g. experiments/quickstart.toml.
        #[arg(required_unless_present = "resume", conflicts_with = "resume")]
        experiment: Option<PathBuf>,
        /// Continue a stopped run from its latest valid committed checkpoint.
        #[arg(long, value_name = "RUN_ID", conflicts_with = "overrides")]
        resume: Option<String>,
        /// The new run's id (default: run.name, the time, 4 random hex digits). When the state
        /// directory already holds this run, it is continued instead, with its own
        /// configuration (a requeued Slurm job, a restarted Kubernetes pod); a run that already
        /// succeeded is left as it is.
        #[arg(long, value_name = "RUN_ID", conflicts_with = "resume")]
        run_id: Option<String>,
        /// Give workers the join token in FILE (a Kubernetes Secret) instead of a new random
        /// one; it is also written to the run folder's `token`.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
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
    /// Act as a worker (what the local launcher runs, unless INCEPT_WORKER_BIN names another).
    #[command(hide = true)]
    Worker(incept_worker::WorkerArgs),
    /// The architectures this build knows: parameters, MACs, input size, stage shapes.
    Models {
        #[command(subcommand)]
        action: Option<ModelsCommand>,
        /// Only this architecture.
        #[arg(long)]
        arch: Option<Arch>,
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
    /// Evaluate a run's newest checkpoint, or a weights file, on a validation split with the
    /// paper's crop protocols; the result goes into the run database's `evaluations` table.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["run_id", "weights"])))]
    Eval {
        /// The run whose newest checkpoint that verifies is evaluated.
        run_id: Option<String>,
        /// A weights file (`coordinator models import`) instead of a run.
        #[arg(long, requires = "arch")]
        weights: Option<PathBuf>,
        /// The architecture of --weights (its knobs: --set model.KEY=VALUE).
        #[arg(long, requires = "weights")]
        arch: Option<Arch>,
        /// The dataset: SOURCE[:PATH], e.g. fashion_mnist, tfrecord:/data/shards,
        /// imagenet:/data/ilsvrc (default: the run's own).
        #[arg(long, value_name = "SOURCE[:PATH]")]
        data: Option<String>,
        /// Crops per image: 1 (central), 10 (corners and centre, each flipped) or 144
        /// (GoogLeNet's); logits are averaged over an image's crops.
        #[arg(long, default_value = "1")]
        crops: Crops,
        /// A run's trained weights instead of their moving average.
        #[arg(long)]
        raw: bool,
        /// Local workers sharing the split (with --set cluster.launcher=external: workers to wait for).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Override a key of the run's experiment (or of the defaults, for --weights).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long, default_value_os_t = run::default_state_dir())]
        state_dir: PathBuf,
    },
    /// Classify JPEG images or `.npy` model inputs with a weights file (top classes, logits).
    Predict(predict::PredictArgs),
    /// One screen about a live or finished run: workers, step, rate, ETA, last evaluation,
    /// recent events (default: the newest run).
    Status {
        run_id: Option<String>,
        #[arg(long, default_value_os_t = run::default_state_dir())]
        state_dir: PathBuf,
    },
    /// Serve a web dashboard of a state directory's runs, live or finished: runs table, curves,
    /// events, CSV downloads, Prometheus /metrics.
    Dashboard {
        #[arg(long, default_value_os_t = run::default_state_dir())]
        state_dir: PathBuf,
        /// Address to listen on (a non-loopback one shows every run to whoever reaches it).
        #[arg(long, default_value = "127.0.0.1:6007")]
        bind: String,
    },
    /// Run every arm of a study (DIR/arms.toml), N at a time; rerunning it skips the arms that
    /// succeeded and continues the others from their checkpoints.
    Sweep(sweep::SweepArgs),
    /// Report on runs grouped into arms (a sweep's, or runs by the keys they differ in): a
    /// Markdown table of each arm's mean ± spread over seeds, SVG figures, CSV files.
    Compare(compare::CompareArgs),
    /// List the runs of a state directory.
    Runs {
        #[arg(long, default_value_os_t = run::default_state_dir())]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Convert a timm checkpoint (safetensors) into incept weights for `model.init_from`.
    Import {
        #[arg(long)]
        arch: Arch,
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
pub enum DatasetCommand {
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
pub enum BenchCommand {
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
    Step(bench::step::StepBench),
    /// Opening a long run in the dashboard (runs table + a chart-width curve) against its
    /// full-resolution curve, over real HTTP on a synthetic run database.
    Dashboard(bench::dashboard::DashboardBench),
    /// The control plane at scale (simulated workers joining and beating over real gRPC:
    /// rendezvous time, heartbeat latency, coordinator CPU and memory) and the time from a
    /// killed worker to the next generation's first step.
    ControlPlane(bench::control_plane::ControlPlaneBench),
    /// Input-pipeline images/s: decode + Inception crop + flip + resize + normalise.
    Data(bench::data::DataBench),
    /// All-reduce time, algbw and busbw per size across real rank processes (as nccl-tests).
    Allreduce(bench::allreduce::AllReduceBench),
    /// One rank process of `bench allreduce` (spawned by it).
    #[command(hide = true)]
    AllreduceRank(bench::allreduce_rank::RankJob),
}
