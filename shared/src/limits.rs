//! Bounds on what one push may carry. Browsers are untrusted: everything a push can make the
//! server do is bounded here.

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
