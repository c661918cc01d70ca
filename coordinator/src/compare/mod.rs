//! `coordinator compare RUN… | --sweep DIR`: a report on runs grouped into arms (their seeds
//! pooled): a Markdown table of each arm's outcome, SVG figures of its curves, and CSV files of
//! the numbers behind them, all read from the run database.

mod history;
mod plots;
mod report;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use incept_common::config;
use rusqlite::{Connection, OpenFlags};

use history::History;
use stats::Outcome;

use crate::run::DATABASE;
use crate::sweep::Sweep;

/// What `coordinator compare` was asked.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The runs to compare (ids in the state directory).
    #[arg(required_unless_present = "sweep", conflicts_with = "sweep")]
    pub runs: Vec<String>,
    /// Compare the arms of a sweep (its folder, holding arms.toml) instead.
    #[arg(long, value_name = "DIR")]
    pub sweep: Option<PathBuf>,
    /// The sweep's profile (default: arms.toml's default_profile).
    #[arg(long, requires = "sweep")]
    pub profile: Option<String>,
    /// Seeds per arm of the sweep (default: arms.toml's list).
    #[arg(long, requires = "sweep")]
    pub seeds: Option<usize>,
    /// Configuration keys whose values make an arm, e.g. model.residual_scale (default: a
    /// sweep's axes; for runs, every key in which they differ but run.seed and run.name).
    #[arg(long, value_name = "KEY", num_args = 1..)]
    pub group_by: Vec<String>,
    /// The training loss whose first crossing is reported (default: the median of the runs'
    /// final smoothed losses).
    #[arg(long)]
    pub loss_target: Option<f64>,
    /// The report to write; figures and CSV files go beside it, named after it.
    #[arg(long, value_name = "FILE.md")]
    pub out: PathBuf,
    /// Where the runs live.
    #[arg(long, default_value_os_t = crate::run::default_state_dir())]
    pub state_dir: PathBuf,
}

/// (key, value) of each grouping key: what makes an arm.
pub type Labels = Vec<(String, String)>;

/// Runs that share their grouping values: one arm, its seeds pooled.
#[derive(Debug)]
pub struct Arm {
    pub labels: Labels,
    pub runs: Vec<(History, Outcome)>,
}

impl Arm {
    /// `key=value …`.
    pub fn name(&self) -> String {
        join_labels(&self.labels)
    }
}

fn join_labels(labels: &[(String, String)]) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if parts.is_empty() {
        "all runs".into()
    } else {
        parts.join(" ")
    }
}

/// What the runs to compare are, and where they come from.
struct Selection {
    title: String,
    /// Each run with its arm's labels, in the order the arms are reported.
    runs: Vec<(History, Labels)>,
    /// Run ids of a sweep's arms that the state directory does not hold yet.
    missing: Vec<String>,
}

/// Runs `coordinator compare`.
pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    if args.out.extension().is_none_or(|e| e != "md") {
        bail!(
            "--out {}: the report is a Markdown file (FILE.md)",
            args.out.display()
        );
    }
    if let Some(target) = args.loss_target
        && !target.is_finite()
    {
        bail!("--loss-target {target}: not a finite loss");
    }
    let database = args.state_dir.join(DATABASE);
    anyhow::ensure!(
        database.is_file(),
        "no run database at {} (--state-dir names the folder `coordinator launch` used)",
        database.display()
    );
    let conn = Connection::open_with_flags(&database, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", database.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let selection = select(args, &conn)?;
    if selection.runs.is_empty() {
        bail!(
            "none of the sweep's {} runs is in {} yet (run `coordinator sweep` first)",
            selection.missing.len(),
            database.display()
        );
    }
    let arms = group(selection.runs);
    let target = args
        .loss_target
        .or_else(|| {
            let outcomes: Vec<Outcome> = arms
                .iter()
                .flat_map(|a| a.runs.iter().map(|(_, o)| o.clone()))
                .collect();
            stats::median_final_loss(&outcomes)
        })
        .unwrap_or(f64::NAN);
    let written = report::write(&report::Report {
        title: &selection.title,
        database: &database,
        arms: &arms,
        loss_target: target,
        target_given: args.loss_target.is_some(),
        missing: &selection.missing,
        out: &args.out,
    })?;
    let runs: usize = arms.iter().map(|a| a.runs.len()).sum();
    println!(
        "compared {runs} run(s) in {} arm(s); wrote {}",
        arms.len(),
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !selection.missing.is_empty() {
        println!(
            "{} run(s) of the sweep not in the state directory yet (listed in the report)",
            selection.missing.len()
        );
    }
    Ok(())
}

/// The runs named on the command line or the sweep's, each labelled with its arm.
fn select(args: &CompareArgs, conn: &Connection) -> anyhow::Result<Selection> {
    let (title, wanted): (String, Vec<(String, Labels)>) = match &args.sweep {
        Some(dir) => {
            let sweep = Sweep::read(dir)?;
            let profile = args
                .profile
                .clone()
                .unwrap_or_else(|| sweep.default_profile().to_string());
            let arms = sweep.arms(&profile, args.seeds)?;
            (
                format!("{} (profile {profile})", sweep.study),
                arms.into_iter().map(|a| (a.run_id, a.levels)).collect(),
            )
        }
        None => (
            format!("{} runs", args.runs.len()),
            args.runs
                .iter()
                .map(|id| (id.clone(), Vec::new()))
                .collect(),
        ),
    };
    let mut runs = Vec::new();
    let mut missing = Vec::new();
    for (id, levels) in wanted {
        match History::read(conn, &id)? {
            Some(history) => runs.push((history, levels)),
            None if args.sweep.is_some() => missing.push(id),
            None => bail!("no run {id} in the state directory (`coordinator runs` lists them)"),
        }
    }
    if args.sweep.is_none() || !args.group_by.is_empty() {
        let keys = if args.group_by.is_empty() {
            differing_keys(&runs)
        } else {
            args.group_by.clone()
        };
        for (history, labels) in &mut runs {
            *labels = keys
                .iter()
                .map(|key| match history.config.get(key) {
                    Some(value) => Ok((key.clone(), value.clone())),
                    None => bail!(
                        "--group-by {key}: run {} has no such configuration key (keys look \
                         like model.residual_scale; `coordinator config FILE` prints them)",
                        history.id
                    ),
                })
                .collect::<anyhow::Result<_>>()?;
        }
    }
    Ok(Selection {
        title,
        runs,
        missing,
    })
}

/// The configuration keys in which the runs differ, but their seed and name.
fn differing_keys(runs: &[(History, Labels)]) -> Vec<String> {
    let configs: Vec<&BTreeMap<String, String>> = runs.iter().map(|(h, _)| &h.config).collect();
    config::differing_keys(&configs)
        .into_iter()
        .filter(|key| !matches!(key.as_str(), "run.seed" | "run.name"))
        .cloned()
        .collect()
}

/// The runs grouped by their labels, arms in the order their first run came.
fn group(runs: Vec<(History, Labels)>) -> Vec<Arm> {
    let mut arms: Vec<Arm> = Vec::new();
    for (history, labels) in runs {
        let outcome = Outcome::of(&history);
        match arms.iter_mut().find(|a| a.labels == labels) {
            Some(arm) => arm.runs.push((history, outcome)),
            None => arms.push(Arm {
                labels,
                runs: vec![(history, outcome)],
            }),
        }
    }
    arms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arm_is_named_by_its_labels() {
        let labels = [
            ("scale".to_string(), "0.1".to_string()),
            ("warmup".to_string(), "none".to_string()),
        ];
        assert_eq!(join_labels(&labels), "scale=0.1 warmup=none");
        assert_eq!(join_labels(&[]), "all runs");
    }
}
