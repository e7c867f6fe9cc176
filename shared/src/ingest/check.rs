//! Checking one sample against the allowlist and the limits, and naming its series: the same
//! checks, in the same order, whichever decoder read the sample.

use std::sync::Arc;

use smallvec::SmallVec;

use super::decode::{Field, LabelName, Labels, Number, Observations, Sample};
use super::{Ingest, RequestContext, cut, keys};
use crate::aggregate::{Aggregate, SeriesKey, to_micros};
use crate::allowlist::{MetricKind, MetricSpec};
use crate::reason::Reason;

impl Ingest {
    /// Validates one sample and, if valid, adds it to `delta`. The same checks, in the same
    /// order, whichever path decoded the sample.
    pub(super) fn check<'a, K: LabelName, V: Field<'a>, N: Number, O: Observations>(
        &self,
        ctx: &RequestContext,
        sample: Sample<K, V, N, O>,
        delta: &mut Aggregate,
    ) -> Result<(), (Option<String>, Reason, String)> {
        let name = match sample.metric_name {
            None => {
                return Err((
                    None,
                    Reason::MissingMetricName,
                    "metricName is missing".into(),
                ));
            }
            Some(raw) => match raw.string() {
                Some(name) => name,
                None => {
                    return Err((
                        None,
                        Reason::InvalidMetricName,
                        "metricName must be a string".into(),
                    ));
                }
            },
        };
        let err = |reason: Reason, message: String| (Some(cut(&name, 200)), reason, message);
        let fail = |reason: Reason, message: String| Err(err(reason, message));
        let Some(spec) = self
            .allowlist
            .get(&name)
            .filter(|s| s.origin != crate::allowlist::Origin::Internal)
        else {
            return fail(
                Reason::UnknownMetric,
                "the metric is not in the allowlist".into(),
            );
        };
        match sample.metric_type.map(Field::string) {
            None => {
                return fail(
                    Reason::MissingMetricType,
                    format!(
                        "metricType is missing; this metric is a {}",
                        spec.kind.as_str()
                    ),
                );
            }
            Some(Some(t)) if t == spec.kind.as_str() => {}
            Some(_) => {
                return fail(
                    Reason::TypeMismatch,
                    format!(
                        "metricType must be {:?} for this metric",
                        spec.kind.as_str()
                    ),
                );
            }
        }
        let key = self
            .series_key(ctx, spec, sample.labels)
            .map_err(|(r, m)| err(r, m))?;
        let max = spec.max_value;
        match &spec.kind {
            MetricKind::Counter => {
                let Some(raw) = sample.inc else {
                    return fail(Reason::MissingValue, "a counter sample needs inc".into());
                };
                let max = max.unwrap_or(self.limits.max_increment);
                let inc = raw
                    .number(max)
                    .map_err(|(r, m)| err(r, format!("inc {m}")))?;
                delta.add_counter(key, to_micros(inc));
            }
            MetricKind::Histogram { .. } => {
                let Some(raw) = sample.observations else {
                    return fail(
                        Reason::MissingValue,
                        "a histogram sample needs observations".into(),
                    );
                };
                let max = max.unwrap_or(self.limits.max_observation);
                // Every observation is checked before any is recorded: a sample is accepted whole.
                let values = raw
                    .values(self.limits.max_observations, max)
                    .map_err(|(r, m)| err(r, m))?;
                delta.observe_all(
                    key,
                    spec.bucket_count(),
                    values.iter().map(|v| (spec.bucket_of(*v), to_micros(*v))),
                );
            }
        }
        Ok(())
    }

    fn series_key<'a, K: LabelName, V: Field<'a>>(
        &self,
        ctx: &RequestContext,
        spec: &MetricSpec,
        labels: Option<Labels<K, V>>,
    ) -> Result<SeriesKey, (Reason, String)> {
        // The shared strings of the series, as they are found: the metric, then each label's
        // name and value.
        let mut pairs: SmallVec<[(&Arc<str>, &Arc<str>); 2]> = SmallVec::new();
        match labels {
            None | Some(Labels(Some(_))) => {}
            Some(Labels(None)) => {
                return Err((
                    Reason::InvalidLabels,
                    "labels must be an object of label names to string values".into(),
                ));
            }
        }
        if let Some(Labels(Some(items))) = labels {
            for (name, raw) in items {
                let name = name.name();
                let Some(label) = spec.label(name).filter(|l| l.source.is_none()) else {
                    return Err((
                        Reason::UnknownLabel,
                        format!(
                            "label {:?} is not allowed for this metric{}",
                            cut(name, 100),
                            if spec.label(name).is_some() {
                                " (the edge fills it in)"
                            } else {
                                ""
                            }
                        ),
                    ));
                };
                let Some(value) = raw.string() else {
                    return Err((
                        Reason::InvalidLabelValue,
                        format!("the value of label {name:?} must be a string"),
                    ));
                };
                if value.len() > self.limits.max_label_value_len {
                    return Err((
                        Reason::LabelValueTooLong,
                        format!(
                            "the value of label {name:?} is longer than {} bytes",
                            self.limits.max_label_value_len
                        ),
                    ));
                }
                let Some(value) = label.resolve(&value) else {
                    return Err((
                        Reason::LabelValueNotAllowed,
                        format!(
                            "{:?} is not an allowed value of label {name:?}",
                            cut(&value, 100)
                        ),
                    ));
                };
                pairs.push((label.interned_name(), value));
            }
        }
        for label in spec.labels.iter().filter(|l| l.source.is_some()) {
            let given = match label.source {
                Some(crate::allowlist::LabelSource::Country) => ctx.country.as_deref(),
                None => None,
            };
            // `otherValue` is required with `source`, so a value always resolves.
            if let Some(value) = given
                .and_then(|v| label.resolve(v))
                .or(label.interned_other())
            {
                pairs.push((label.interned_name(), value));
            }
        }
        let metric = spec.interned_name();
        keys::get_or_make(metric, &pairs, || {
            let mut owned: SmallVec<[(Arc<str>, Arc<str>); 2]> = pairs
                .iter()
                .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
                .collect();
            owned.sort_unstable();
            if owned.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err((Reason::InvalidLabels, "a label is given twice".into()));
            }
            Ok(SeriesKey::from_parts(Arc::clone(metric), owned))
        })
    }
}
