//! Bounds on what one push may carry. Browsers are untrusted: everything a push can make the
//! server do is bounded here.
//!
//! The bounds also decide how large a stored total can grow: a counter's total and a histogram's
//! sum are kept exactly, in millionths in a `u128` (up to about 3.4e32 units), and bucket counts
//! in a `u64`. [`Limits::check`] refuses, at start-up, any maximum under which
//! [`PLAUSIBLE_PUSHES`] pushes could take a total past that.

use crate::aggregate::{micros_to_f64, to_micros};
use crate::allowlist::{Allowlist, ConfigError, MetricKind};

/// How many pushes into one series pum's totals must be able to hold: 10^12, a thousand pushes a
/// second for about 31 years. [`Limits::check`] refuses any maximum for which this many pushes,
/// each adding the most one push may add to one series, could overflow a total. So no total
/// nears its ceiling in practice; and should one be about to pass it (totals seeded from
/// elsewhere), the push is refused ([`crate::Reason::TotalOverflow`]), never pinned there.
pub const PLAUSIBLE_PUSHES: u64 = 1_000_000_000_000;

/// [`PLAUSIBLE_PUSHES`] as error messages say it.
const PLAUSIBLE: &str = "10^12 pushes (1,000 a second for about 30 years)";

/// The source name of a [`ConfigError`] about a limit itself (its `field` is the limit's name,
/// e.g. `max_increment`).
pub const LIMITS_SOURCE: &str = "push limits";

/// Limits applied to every push. Each default is documented on its field and in the README.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Largest accepted body in bytes. Default 64 KiB: a realistic beacon is about 1.4 KB.
    pub max_body_bytes: usize,
    /// Most samples in one push. Default 200.
    pub max_samples: usize,
    /// Most observations in one histogram sample. Default 100.
    pub max_observations: usize,
    /// Longest label value in bytes. Default 128.
    pub max_label_value_len: usize,
    /// Largest counter increment in one sample, unless the metric sets `maxValue`. Default 1e6.
    pub max_increment: f64,
    /// Largest histogram observation, unless the metric sets `maxValue`. Default 1e9.
    pub max_observation: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_samples: 200,
            max_observations: 100,
            max_label_value_len: 128,
            max_increment: 1e6,
            max_observation: 1e9,
        }
    }
}

impl Limits {
    /// Checks that no total can overflow within [`PLAUSIBLE_PUSHES`] pushes under these limits
    /// and `allowlist`: the default maxima ([`Limits::max_increment`],
    /// [`Limits::max_observation`]), the observations a push may add to one histogram's buckets,
    /// and each metric's `maxValue`. Every adapter runs it at start-up, after compiling the
    /// allowlist. An error about a metric names its source, the metric and `maxValue`; one about
    /// a limit has [`LIMITS_SOURCE`] as its source and the limit's name as its field.
    pub fn check(&self, allowlist: &Allowlist) -> Result<(), ConfigError> {
        let limit = |field: &str, message: String| ConfigError {
            source_name: LIMITS_SOURCE.to_owned(),
            metric: None,
            field: Some(field.to_owned()),
            message,
        };
        let samples = self.max_samples as u128;
        let observations = self.values_per_push(&HISTOGRAM);
        let most_counts = u128::from(u64::MAX) / u128::from(PLAUSIBLE_PUSHES);
        if samples > most_counts {
            return Err(limit(
                "max_samples",
                format!(
                    "{samples} samples in a push could overflow a histogram's bucket count (a u64) within {PLAUSIBLE}; at most {most_counts} is safe"
                ),
            ));
        }
        if observations > most_counts {
            return Err(limit(
                "max_observations",
                format!(
                    "{} observations in each of {samples} samples of a push could overflow a histogram's bucket count (a u64) within {PLAUSIBLE}; at most {} per sample is safe",
                    self.max_observations,
                    most_counts / samples.max(1)
                ),
            ));
        }
        self.check_max(&MetricKind::Counter, self.max_increment)
            .map_err(|m| limit("max_increment", m))?;
        self.check_max(&HISTOGRAM, self.max_observation)
            .map_err(|m| limit("max_observation", m))?;
        for metric in allowlist.metrics() {
            let (Some(max), Some(source_name)) = (metric.max_value, metric.origin.source_name())
            else {
                continue;
            };
            self.check_max(&metric.kind, max)
                .map_err(|message| ConfigError {
                    source_name,
                    metric: Some(metric.name.clone()),
                    field: Some("maxValue".to_owned()),
                    message,
                })?;
        }
        Ok(())
    }

    /// The most values one push can add to one series of `kind`: an increment per sample, or
    /// every observation of every sample.
    fn values_per_push(&self, kind: &MetricKind) -> u128 {
        let samples = self.max_samples as u128;
        match kind {
            MetricKind::Counter => samples,
            MetricKind::Histogram { .. } => samples.saturating_mul(self.max_observations as u128),
        }
    }

    /// Whether values up to `max` keep a total of `kind` (a counter's total, a histogram's sum)
    /// exact for [`PLAUSIBLE_PUSHES`] pushes; if not, says why and what is safe.
    fn check_max(&self, kind: &MetricKind, max: f64) -> Result<(), String> {
        if !(max.is_finite() && max > 0.0) {
            return Err(format!("is {}; it must be a positive number", number(max)));
        }
        let values = self.values_per_push(kind);
        let ceiling = u128::MAX / u128::from(PLAUSIBLE_PUSHES) / values.max(1);
        if to_micros(max) <= ceiling {
            return Ok(());
        }
        let (what, total) = match kind {
            MetricKind::Counter => ("increments", "a counter's total"),
            MetricKind::Histogram { .. } => ("observations", "a histogram's sum"),
        };
        // Shown 0.5% low, so that rounding to three digits never shows more than is safe.
        Err(format!(
            "{} could overflow {total} (kept exactly, in millionths in a u128) within {PLAUSIBLE} of {values} {what} each; at most {:.2e} is safe",
            number(max),
            micros_to_f64(ceiling) * 0.995
        ))
    }
}

/// A number as a person writes it: `1e300` rather than 301 digits, `2.5` rather than `2.5e0`.
fn number(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e15).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// A histogram, for the checks that depend only on the kind.
const HISTOGRAM: MetricKind = MetricKind::Histogram {
    buckets: Vec::new(),
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist::{BROWSER_PACK, EXAMPLE_ALLOWLIST};

    fn allowlist(max_value: &str, kind: &str) -> Allowlist {
        let text = format!(
            r#"{{"allowedMetrics":[{{"name":"big_total","help":"h","type":"{kind}","maxValue":{max_value}}}]}}"#
        );
        Allowlist::compile([("big.json", text.as_str())], false).expect("compiles")
    }

    #[test]
    fn the_defaults_and_the_built_in_allowlists_pass() {
        let limits = Limits::default();
        limits
            .check(&Allowlist::example())
            .expect("example and browser pack");
        let list = Allowlist::compile([("example", EXAMPLE_ALLOWLIST)], true).expect("compiles");
        limits.check(&list).expect("example");
        assert!(BROWSER_PACK.contains("allowedMetrics"));
        limits
            .check(&Allowlist::compile(std::iter::empty(), false).expect("empty"))
            .expect("pum's own metrics alone");
    }

    #[test]
    fn a_max_value_that_could_overflow_names_source_metric_and_field() {
        let e = Limits::default()
            .check(&allowlist("1e300", "counter"))
            .expect_err("1e300 is refused");
        assert_eq!(e.source_name, "big.json");
        assert_eq!(e.metric.as_deref(), Some("big_total"));
        assert_eq!(e.field.as_deref(), Some("maxValue"));
        assert!(e.message.contains("at most 1.69e18 is safe"), "{e}");
        assert!(
            e.to_string()
                .starts_with("big.json: metric \"big_total\": field \"maxValue\": 1e300 could")
        );
        // The issue's example: four pushes of 1e32 pinned a counter at its ceiling.
        assert!(
            Limits::default()
                .check(&allowlist("1e32", "counter"))
                .is_err()
        );
        // What the message calls safe is; histograms carry more values per push.
        Limits::default()
            .check(&allowlist("1.69e18", "counter"))
            .expect("safe");
        let e = Limits::default()
            .check(&allowlist("1.69e18", "histogram"))
            .expect_err("a histogram adds 100 times more values");
        assert!(e.message.contains("at most 1.69e16 is safe"), "{e}");
        Limits::default()
            .check(&allowlist("1.69e16", "histogram"))
            .expect("safe");
    }

    #[test]
    fn the_bound_is_exact_at_the_last_millionth() {
        let limits = Limits {
            max_samples: 1,
            ..Limits::default()
        };
        let ceiling = u128::MAX / u128::from(PLAUSIBLE_PUSHES);
        // An f64 holds the ceiling only roughly: test the comparison on each side of it.
        let just_below = micros_to_f64(ceiling) * (1.0 - 1e-12);
        let just_above = micros_to_f64(ceiling) * (1.0 + 1e-12);
        assert!(to_micros(just_below) <= ceiling && to_micros(just_above) > ceiling);
        let kind = MetricKind::Counter;
        assert!(limits.check_max(&kind, just_below).is_ok());
        assert!(limits.check_max(&kind, just_above).is_err());
    }

    #[test]
    fn default_maxima_and_counts_that_could_overflow_name_the_limit() {
        let list = Allowlist::compile(std::iter::empty(), false).expect("empty");
        let d = Limits::default;
        for (limits, field) in [
            (
                Limits {
                    max_increment: 1e20,
                    ..d()
                },
                "max_increment",
            ),
            (
                Limits {
                    max_increment: f64::NAN,
                    ..d()
                },
                "max_increment",
            ),
            (
                Limits {
                    max_observation: 1e17,
                    ..d()
                },
                "max_observation",
            ),
            // 200 samples of 100,000 observations: 2e7 a push, 2e19 in 10^12 pushes > u64::MAX.
            (
                Limits {
                    max_observations: 100_000,
                    ..d()
                },
                "max_observations",
            ),
            // More samples a push lower every maximum.
            (
                Limits {
                    max_samples: 1_000_000,
                    ..d()
                },
                "max_observations",
            ),
            (
                Limits {
                    max_samples: 1_000_000_000,
                    ..d()
                },
                "max_samples",
            ),
        ] {
            let e = limits.check(&list).expect_err(field);
            assert_eq!(e.source_name, LIMITS_SOURCE);
            assert_eq!(
                (e.metric, e.field.as_deref()),
                (None, Some(field)),
                "{limits:?}"
            );
        }
        Limits {
            max_observations: 92_233,
            ..d()
        }
        .check(&list)
        .expect("just fits");
    }
}
