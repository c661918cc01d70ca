//! Writes a comparison: `NAME.md` (the arm and run tables, the figures, how each number is
//! made, provenance), `NAME-{loss,top1,dead,ratio}.svg`, `NAME-runs.csv` (the run table) and
//! `NAME-curves.csv` (every step of every run), each written atomically.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use incept_common::fsutil::write_atomic;

use super::Arm;
use super::history::History;
use super::plots::{Figure, Line, Panel};
use super::stats::{Curve, LOSS_SMOOTHING, Outcome, Spread, across_runs};

/// Everything a report is made of.
pub struct Report<'a> {
    pub title: &'a str,
    pub database: &'a Path,
    pub arms: &'a [Arm],
    /// The loss whose first crossing is timed (NaN: no run has a finite loss).
    pub loss_target: f64,
    /// Whether the target came from `--loss-target` (else: the median final loss).
    pub target_given: bool,
    /// Sweep runs not in the database yet.
    pub missing: &'a [String],
    pub out: &'a Path,
}

/// Writes the report and its files; returns their paths.
pub fn write(report: &Report) -> anyhow::Result<Vec<PathBuf>> {
    let folder = report.out.parent().unwrap_or(Path::new(""));
    if !folder.as_os_str().is_empty() {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
    }
    let stem = report
        .out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sibling = |suffix: &str| folder.join(format!("{stem}-{suffix}"));
    let mut written = Vec::new();
    let mut figures = Vec::new();
    for (name, figure) in figures_of(report.arms) {
        let path = sibling(&format!("{name}.svg"));
        save(&path, figure.to_svg()?.as_bytes())?;
        figures.push((figure.title, path.clone()));
        written.push(path);
    }
    let runs_csv = sibling("runs.csv");
    save(&runs_csv, runs_csv_text(report).as_bytes())?;
    let curves_csv = sibling("curves.csv");
    save(&curves_csv, curves_csv_text(report.arms).as_bytes())?;
    let markdown = markdown(report, &figures, &runs_csv, &curves_csv);
    save(report.out, markdown.as_bytes())?;
    written.insert(0, report.out.to_path_buf());
    written.extend([runs_csv, curves_csv]);
    Ok(written)
}

fn save(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, bytes, 0o644).with_context(|| format!("writing {}", path.display()))
}

/// The arms' figures, by file suffix: training loss, top-1, dead-unit fraction, and the
/// residual/shortcut ratio of each stage. An arm with two or more grouping keys is drawn in
/// the panel of its last key's value, coloured by the others.
fn figures_of(arms: &[Arm]) -> Vec<(&'static str, Figure)> {
    let facets = Facets::of(arms);
    let per_arm = |points: &dyn Fn(&History, &Outcome) -> Curve| {
        arms.iter()
            .map(|arm| {
                let runs: Vec<Curve> = arm.runs.iter().map(|(h, o)| points(h, o)).collect();
                across_runs(runs.iter().map(Vec::as_slice))
                    .into_iter()
                    .map(|(step, mean, low, high)| (step as f64, mean, low, high))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let figure_of_panels = |title: &str, y_label: &str, panels: Vec<Panel>| Figure {
        title: title.into(),
        x_label: "step".into(),
        y_label: y_label.into(),
        columns: facets.titles.len(),
        panels,
    };
    let figure = |title: &str, y_label: &str, curves: &[Vec<(f64, f64, f64, f64)>]| {
        figure_of_panels(title, y_label, facets.panels(curves, ""))
    };
    let mut out = Vec::new();
    let loss = per_arm(&|_, o| o.smoothed_loss.clone());
    out.push((
        "loss",
        figure(
            &format!("training loss (smoothed, {LOSS_SMOOTHING})"),
            "loss",
            &loss,
        ),
    ));
    let top1 = per_arm(&|h, _| {
        h.evaluations
            .iter()
            .map(|&(s, top1, _)| (s, 100.0 * top1))
            .collect()
    });
    if top1.iter().any(|c| !c.is_empty()) {
        out.push(("top1", figure("top-1 accuracy", "top-1 (%)", &top1)));
    }
    let dead = per_arm(&|h, _| {
        h.probes
            .iter()
            .map(|p| (p.step, 100.0 * p.dead_fraction))
            .collect()
    });
    if dead.iter().any(|c| !c.is_empty()) {
        out.push((
            "dead",
            figure("dead units of the final feature map", "zeros (%)", &dead),
        ));
    }
    let mut ratio_panels = Vec::new();
    for (stage, name) in ["A", "B", "C"].iter().enumerate() {
        let curves = per_arm(&|h, _| {
            h.probes
                .iter()
                .filter_map(|p| p.ratios[stage].map(|r| (p.step, r)))
                .collect()
        });
        if curves.iter().any(|c| !c.is_empty()) {
            ratio_panels.extend(facets.panels(&curves, &format!("stage {name}")));
        }
    }
    if !ratio_panels.is_empty() {
        out.push((
            "ratio",
            figure_of_panels(
                "‖scale·residual‖ / ‖shortcut‖ per residual stage",
                "ratio",
                ratio_panels,
            ),
        ));
    }
    out
}

/// How arms map to panels and colours.
struct Facets {
    /// Each panel's title (one untitled panel when arms have fewer than two grouping keys).
    titles: Vec<String>,
    /// Per arm: (panel, colour, line label).
    places: Vec<(usize, usize, String)>,
}

impl Facets {
    fn of(arms: &[Arm]) -> Self {
        let mut titles: Vec<String> = Vec::new();
        let mut colours: Vec<String> = Vec::new();
        let mut places = Vec::new();
        for arm in arms {
            let (panel, colour) = match arm.labels.split_last() {
                Some((last, rest)) if !rest.is_empty() => (
                    super::join_labels(std::slice::from_ref(last)),
                    super::join_labels(rest),
                ),
                _ => (String::new(), arm.name()),
            };
            let index = |names: &mut Vec<String>, name: String| {
                names.iter().position(|n| *n == name).unwrap_or_else(|| {
                    names.push(name);
                    names.len() - 1
                })
            };
            let panel_index = index(&mut titles, panel);
            let colour_index = index(&mut colours, colour.clone());
            places.push((panel_index, colour_index, colour));
        }
        Self { titles, places }
    }

    /// A panel per title holding each arm's curve, titles prefixed by `prefix`.
    fn panels(&self, curves: &[Vec<(f64, f64, f64, f64)>], prefix: &str) -> Vec<Panel> {
        let mut panels: Vec<Panel> = self
            .titles
            .iter()
            .map(|t| Panel {
                title: [prefix, t.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" · "),
                lines: Vec::new(),
            })
            .collect();
        for (&(panel, colour, ref label), curve) in self.places.iter().zip(curves) {
            if !curve.is_empty() {
                panels[panel].lines.push(Line {
                    label: label.clone(),
                    colour,
                    points: curve.clone(),
                });
            }
        }
        panels
    }
}

/// `value` with `decimals` decimals, or "–".
fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

fn spread(values: &[f64], decimals: usize) -> String {
    Spread::of(values).map_or("–".into(), |s| s.format(decimals))
}

fn markdown(
    report: &Report,
    figures: &[(String, PathBuf)],
    runs_csv: &Path,
    curves_csv: &Path,
) -> String {
    let target = report.loss_target;
    let file = |path: &Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let runs: usize = report.arms.iter().map(|a| a.runs.len()).sum();
    let mut md = String::new();
    let _ = writeln!(md, "# Comparison: {}\n", report.title);
    let _ = writeln!(
        md,
        "{runs} run(s) in {} arm(s), read from `{}` by `coordinator compare` (incept {}) on {}.\n",
        report.arms.len(),
        report.database.display(),
        crate::CODE_VERSION,
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
    );
    let target_origin = if report.target_given {
        "--loss-target"
    } else {
        "the median of the runs' final smoothed losses"
    };
    let _ = writeln!(
        md,
        "Each arm's figure is the mean ± sample standard deviation over its runs (its seeds; one \
         run: its value).\n\
         - **top-1 / top-5**: the final evaluation, in %.\n\
         - **steps to loss ≤ {target:.3}** ({target_origin}): the first step at which the \
           training loss, smoothed as TensorBoard does (debiased moving average, weight \
           {LOSS_SMOOTHING}), is at most that; `k/n` when only k of the n runs got there.\n\
         - **max grad norm**: the largest pre-clip global gradient norm of any step.\n\
         - **skipped**: steps skipped because the loss or the gradient was not finite.\n\
         - **peak dead**: the largest fraction of zeros in the final feature map at any probe, \
           in %.\n\
         - **died**: runs whose dead fraction stayed above `train.dead_alert` for \
           `train.dead_alert_window` probes in a row (the dashboard's \"dying\" event).\n"
    );
    let _ = writeln!(
        md,
        "| arm | runs | top-1 % | top-5 % | steps to loss ≤ {target:.3} | max grad norm | \
         skipped | peak dead % | died |\n|---|---|---|---|---|---|---|---|---|"
    );
    for arm in report.arms {
        let outcomes: Vec<&Outcome> = arm.runs.iter().map(|(_, o)| o).collect();
        let accuracy = |pick: fn((f64, f64)) -> f64| -> Vec<f64> {
            arm.runs
                .iter()
                .filter_map(|(h, _)| h.final_accuracy.map(|a| 100.0 * pick(a)))
                .collect()
        };
        let reached: Vec<f64> = outcomes
            .iter()
            .filter_map(|o| o.steps_to(target).map(|s| s as f64))
            .collect();
        let mut steps = spread(&reached, 0);
        if reached.len() < outcomes.len() {
            steps = format!("{steps} ({}/{})", reached.len(), outcomes.len());
        }
        let grad: Vec<f64> = outcomes.iter().filter_map(|o| o.max_grad_norm).collect();
        let skipped: Vec<f64> = outcomes.iter().map(|o| o.skipped as f64).collect();
        let dead: Vec<f64> = outcomes
            .iter()
            .filter_map(|o| o.peak_dead_fraction.map(|d| 100.0 * d))
            .collect();
        let died = outcomes.iter().filter(|o| o.died_at.is_some()).count();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {steps} | {} | {} | {} | {died}/{} |",
            arm.name(),
            arm.runs.len(),
            spread(&accuracy(|a| a.0), 2),
            spread(&accuracy(|a| a.1), 2),
            spread(&grad, 2),
            spread(&skipped, 1),
            spread(&dead, 1),
            arm.runs.len(),
        );
    }
    if !figures.is_empty() {
        let _ = writeln!(
            md,
            "\n## Figures\n\nEach line is an arm's mean over its runs; the band spans their minimum and maximum.\n"
        );
        for (title, path) in figures {
            let _ = writeln!(md, "![{title}]({})\n", file(path));
        }
    }
    let _ = writeln!(
        md,
        "## Runs\n\nThe same columns per run in `{}`; every step of every run (loss, learning \
         rate, gradient norm, probes) in `{}`.\n",
        file(runs_csv),
        file(curves_csv)
    );
    let _ = writeln!(
        md,
        "| run | seed | status | steps | top-1 % | top-5 % | final loss | max grad norm | \
         skipped | peak dead % | died at | config sha256 | code |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for arm in report.arms {
        for (history, outcome) in &arm.runs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | `{}` | {} |",
                history.id,
                history.seed,
                history.status,
                outcome.last_step.map_or("–".into(), |s| s.to_string()),
                number(history.final_accuracy.map(|a| 100.0 * a.0), 2),
                number(history.final_accuracy.map(|a| 100.0 * a.1), 2),
                number(outcome.final_loss(), 3),
                number(outcome.max_grad_norm, 2),
                outcome.skipped,
                number(outcome.peak_dead_fraction.map(|d| 100.0 * d), 1),
                outcome.died_at.map_or("–".into(), |s| s.to_string()),
                history.config_hash,
                history.code_version.as_deref().unwrap_or("unrecorded"),
            );
        }
    }
    if !report.missing.is_empty() {
        let _ = writeln!(
            md,
            "\n## Not run yet\n\nThe sweep's runs the state directory does not hold: {}.",
            report.missing.join(", ")
        );
    }
    md
}

/// A CSV field, quoted when it needs to be.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn optional(value: Option<f64>) -> String {
    value.map_or(String::new(), |v| v.to_string())
}

fn runs_csv_text(report: &Report) -> String {
    let mut csv = String::from(
        "run,arm,seed,status,last_step,top1,top5,final_smoothed_loss,steps_to_target,\
         loss_target,max_grad_norm,skipped,peak_dead_fraction,died_at,config_sha256,code_version\n",
    );
    for arm in report.arms {
        for (h, o) in &arm.runs {
            let row = [
                h.id.clone(),
                arm.name(),
                h.seed.to_string(),
                h.status.clone(),
                o.last_step.map_or(String::new(), |s| s.to_string()),
                optional(h.final_accuracy.map(|a| a.0)),
                optional(h.final_accuracy.map(|a| a.1)),
                optional(o.final_loss()),
                o.steps_to(report.loss_target)
                    .map_or(String::new(), |s| s.to_string()),
                report.loss_target.to_string(),
                optional(o.max_grad_norm),
                o.skipped.to_string(),
                optional(o.peak_dead_fraction),
                o.died_at.map_or(String::new(), |s| s.to_string()),
                h.config_hash.clone(),
                h.code_version.clone().unwrap_or_default(),
            ];
            let fields: Vec<String> = row.iter().map(|f| field(f)).collect();
            let _ = writeln!(csv, "{}", fields.join(","));
        }
    }
    csv
}

fn curves_csv_text(arms: &[Arm]) -> String {
    let mut csv = String::from(
        "run,step,loss,learning_rate,grad_norm,skipped,dead_fraction,ratio_a,ratio_b,ratio_c\n",
    );
    for (h, _) in arms.iter().flat_map(|a| &a.runs) {
        let mut probes = h.probes.iter().peekable();
        for step in &h.steps {
            while probes.next_if(|p| p.step < step.step).is_some() {}
            let probe = probes.next_if(|p| p.step == step.step);
            let ratio = |i: usize| optional(probe.and_then(|p| p.ratios[i]));
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{}",
                field(&h.id),
                step.step,
                step.loss,
                step.learning_rate,
                step.grad_norm,
                u8::from(step.skipped),
                optional(probe.map(|p| p.dead_fraction)),
                ratio(0),
                ratio(1),
                ratio(2),
            );
        }
    }
    csv
}
