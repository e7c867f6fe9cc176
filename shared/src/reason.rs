//! Why a push was refused or a sample rejected: the stable reason codes of every answer and of
//! pum's `reason`-labelled counters, each with its HTTP status.

use std::fmt;

use serde::Serialize;

macro_rules! reasons {
    ($($variant:ident = $code:literal, $push:literal, $status:literal, $doc:literal;)*) => {
        /// Why a push was refused or a sample rejected. The code ([`Reason::as_str`]) is stable:
        /// it is the `error`/`reason` in answers and the `reason` label of pum's counters.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $(#[doc = $doc] $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable machine-readable code.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $code,)* }
            }

            /// Whether the reason refuses a whole push (else it rejects one sample).
            pub fn is_push_level(self) -> bool {
                match self { $(Reason::$variant => $push,)* }
            }

            /// The HTTP status of a push refused for this reason.
            pub fn status(self) -> u16 {
                match self { $(Reason::$variant => $status,)* }
            }
        }
    };
}

reasons! {
    InvalidJson = "invalid_json", true, 400, "The body is not valid JSON (or is nested too deep).";
    NotAnArray = "not_an_array", true, 400, "The body is JSON but not an array of samples.";
    EmptyBatch = "empty_batch", true, 400, "The array holds no samples.";
    BodyTooLarge = "body_too_large", true, 413, "The body is larger than the limit.";
    BodyTimeout = "body_timeout", true, 408, "The body did not arrive within the body timeout.";
    TooManySamples = "too_many_samples", true, 413, "The array holds more samples than the limit.";
    UnsupportedMediaType = "unsupported_media_type", true, 415, "The Content-Type is neither application/json nor text/plain.";
    OriginNotAllowed = "origin_not_allowed", true, 403, "The request's Origin is not in the origin allowlist.";
    InvalidBatchId = "invalid_batch_id", true, 400, "The batch parameter of the URL is not 16 to 64 characters of A-Za-z0-9_-.";
    RateLimited = "rate_limited", true, 429, "The client sent more pushes than the edge's rate limit allows.";
    NoValidSamples = "no_valid_samples", true, 400, "Every sample was rejected; each is listed with its reason.";
    TotalOverflow = "total_overflow", true, 422, "Adding the push would take a stored total past what pum holds exactly; nothing of it was recorded.";
    InvalidSample = "invalid_sample", false, 400, "The sample is not a JSON object of the sample shape.";
    MissingMetricName = "missing_metric_name", false, 400, "The sample has no metricName.";
    InvalidMetricName = "invalid_metric_name", false, 400, "metricName is not a string.";
    UnknownMetric = "unknown_metric", false, 400, "The metric is not in the allowlist.";
    MissingMetricType = "missing_metric_type", false, 400, "The sample has no metricType.";
    TypeMismatch = "type_mismatch", false, 400, "metricType is not the allowlisted type of the metric.";
    InvalidLabels = "invalid_labels", false, 400, "labels is not an object of label names to values.";
    UnknownLabel = "unknown_label", false, 400, "A label name is not allowlisted for the metric.";
    InvalidLabelValue = "invalid_label_value", false, 400, "A label value is not a string.";
    LabelValueTooLong = "label_value_too_long", false, 400, "A label value is longer than the limit.";
    LabelValueNotAllowed = "label_value_not_allowed", false, 400, "A label value is not in the label's allowedValues.";
    MissingValue = "missing_value", false, 400, "A counter has no inc, or a histogram no observations.";
    InvalidValue = "invalid_value", false, 400, "inc or an observation is not a number, or observations is not an array.";
    TooManyObservations = "too_many_observations", false, 400, "A histogram sample carries more observations than the limit.";
    ValueOutOfRange = "value_out_of_range", false, 400, "A value is negative, not finite, or above the metric's maximum.";
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
