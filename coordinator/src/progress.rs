//! Run progress for a person watching: an indicatif bar on a terminal, periodic log lines
//! otherwise (CI, files, `nohup`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Interval between progress lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// A run's (or an evaluation's) progress for a person watching.
pub struct Progress {
    /// What is counted: `step`, or `image` for an evaluation.
    noun: &'static str,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    done: u64,
    /// What the line says after the count (the loss and rate of a training step).
    message: String,
}

impl Progress {
    /// Progress of a run's `total` training steps.
    pub fn new(total: u64) -> Self {
        Self::counting("step", total)
    }

    /// Progress of `total` things named `noun`.
    pub fn counting(noun: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{elapsed_precise}} [{{bar:30}}] {noun} {{pos}}/{{len}} {{msg}} ETA {{eta}}"
                ))
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            noun,
            total,
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
            done: 0,
            message: String::new(),
        }
    }

    /// Records rank 0's latest step; `images_per_sec` is per rank and is scaled to the world.
    pub fn update(&mut self, step: u64, loss: f64, images_per_sec: f64) {
        if step > self.done {
            self.advance(
                step,
                format!("loss {loss:.4}, {images_per_sec:.1} img/s/worker"),
            );
        }
    }

    /// Records how many of the total are done, and what to say about it.
    pub fn advance(&mut self, done: u64, message: String) {
        self.done = done;
        self.message = message;
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(self.message.clone());
            }
            None if self.last_line.elapsed() >= LINE_EVERY || done == self.total => {
                self.last_line = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = if self.done > 0 {
            elapsed / self.done as f64 * self.total.saturating_sub(self.done) as f64
        } else {
            f64::NAN
        };
        let message = if self.message.is_empty() {
            String::new()
        } else {
            format!(", {}", self.message)
        };
        format!(
            "{} {}/{} ({:.0}%){message}, elapsed {}, ETA {}",
            self.noun,
            self.done,
            self.total,
            100.0 * self.done as f64 / self.total.max(1) as f64,
            human(elapsed),
            human(eta)
        )
    }

    /// Logs a message without tearing the bar.
    pub fn println(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Seconds as `1h02m`, `3m05s` or `12s`.
pub fn human(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".into();
    }
    let s = seconds.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn formats_durations() {
        assert_eq!(human(12.2), "12s");
        assert_eq!(human(185.0), "3m05s");
        assert_eq!(human(3720.0), "1h02m");
        assert_eq!(human(f64::NAN), "?");
    }
}
