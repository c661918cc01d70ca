//! Counting the images a replica could not use (they do not decode) and stopping the run when
//! too many are bad: a dataset in which nothing decodes must fail, not "succeed" on no images.

use anyhow::bail;

/// Samples seen before the bad fraction is judged, so that one bad image among the first few
/// does not stop a run whose dataset is fine.
const MIN_SAMPLES: u64 = 1000;

/// The bad images of one replica's training share so far, against `data.max_bad_fraction`.
#[derive(Debug, Clone)]
pub struct DataQuality {
    max_bad_fraction: f64,
    used: u64,
    bad: u64,
}

impl DataQuality {
    /// Nothing seen yet; fail above `max_bad_fraction` of bad images.
    pub fn new(max_bad_fraction: f64) -> Self {
        Self {
            max_bad_fraction,
            used: 0,
            bad: 0,
        }
    }

    /// Records step `step`'s images (`used` went into the step, `bad` were left out, each with
    /// its reason). Fails when none of the step's images could be used, or when more than
    /// `max_bad_fraction` of the images seen so far were bad.
    pub fn record(&mut self, step: u64, used: usize, bad: &[String]) -> anyhow::Result<()> {
        self.used += used as u64;
        self.bad += bad.len() as u64;
        let Some(example) = bad.last() else {
            return Ok(());
        };
        if used == 0 {
            bail!(
                "step {step}: none of this rank's {} images could be used (e.g. {example}); \
                 is data.path the right dataset?",
                bad.len()
            );
        }
        let seen = self.used + self.bad;
        if seen >= MIN_SAMPLES && self.bad as f64 > self.max_bad_fraction * seen as f64 {
            bail!(
                "{} of the {seen} training images seen by this rank could not be used ({:.2}%), \
                 above data.max_bad_fraction = {} (e.g. {example})",
                self.bad,
                100.0 * self.bad as f64 / seen as f64,
                self.max_bad_fraction
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("img{i}.JPEG: not a JPEG")).collect()
    }

    #[test]
    fn a_step_without_one_usable_image_fails() {
        let mut quality = DataQuality::new(1.0);
        let err = quality.record(1, 0, &bad(8)).unwrap_err().to_string();
        assert!(err.contains("none of this rank's 8 images"), "{err}");
        assert!(err.contains("img7.JPEG: not a JPEG"), "{err}");
    }

    #[test]
    fn the_bad_fraction_is_judged_once_enough_images_are_seen() {
        let mut quality = DataQuality::new(0.01);
        // 1 bad in the first 32: judged later, not now.
        quality.record(1, 31, &bad(1)).unwrap();
        for step in 2..=31 {
            quality.record(step, 32, &[]).unwrap();
        }
        // 1,024 seen, 1 bad: under 1 %.
        quality.record(32, 32, &[]).unwrap();
        // 20 more bad in one step: 21 of 1,056, about 2 %.
        let err = quality.record(33, 12, &bad(20)).unwrap_err().to_string();
        assert!(err.contains("21 of the 1056"), "{err}");
        assert!(err.contains("data.max_bad_fraction = 0.01"), "{err}");
    }

    #[test]
    fn clean_steps_pass() {
        let mut quality = DataQuality::new(0.0);
        for step in 1..100 {
            quality.record(step, 32, &[]).unwrap();
        }
    }
}
