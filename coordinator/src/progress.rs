//! Run progress for a person watching: an indicatif bar on a terminal, periodic log lines
//! otherwise (CI, files, `nohup`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Interval between progress lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    step: u64,
    loss: f64,
    images_per_sec: f64,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            total,
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
            step: 0,
            loss: f64::NAN,
            images_per_sec: 0.0,
        }
    }

    /// Records rank 0's latest step; `images_per_sec` is per rank and is scaled to the world.
    pub fn update(&mut self, step: u64, loss: f64, images_per_sec: f64) {
        if step <= self.step {
            return;
        }
        self.step = step;
        self.loss = loss;
        self.images_per_sec = images_per_sec;
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(format!("loss {loss:.4}, {images_per_sec:.1} img/s/worker"));
            }
            None if self.last_line.elapsed() >= LINE_EVERY || step == self.total => {
                self.last_line = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = if self.step > 0 {
            elapsed / self.step as f64 * (self.total - self.step) as f64
        } else {
            f64::NAN
        };
        format!(
            "step {}/{} ({:.0}%), loss {:.4}, {:.1} img/s/worker, elapsed {}, ETA {}",
            self.step,
            self.total,
            100.0 * self.step as f64 / self.total.max(1) as f64,
            self.loss,
            self.images_per_sec,
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
