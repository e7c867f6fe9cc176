//! pum's own metrics, declared once: their names, help and labels.
//!
//! Two kinds. [`STORED`] are counted by the ingest core and travel through the store in the same
//! delta as the data they describe, so every backend (standalone, Worker, Lambda) reports them and
//! the collector renders them like any allowlisted metric ([`crate::Allowlist`] includes them).
//! [`PROCESS`] are kept by the process that serves them (the collector, standalone's servers) and
//! never stored.

use crate::aggregate::{Aggregate, SeriesKey, SeriesValue};
use crate::ingest::Rejection;
use crate::reason::Reason;

/// Pushes received on `/record`, by `result` (`accepted`, `partial`, `rejected`).
pub const PUSHES: &str = "pum_pushes_total";
/// Samples accepted.
pub const SAMPLES_ACCEPTED: &str = "pum_samples_accepted_total";
/// Samples rejected, by `reason`.
pub const SAMPLES_REJECTED: &str = "pum_samples_rejected_total";
/// Whole pushes refused, by `reason`.
pub const PUSHES_REJECTED: &str = "pum_pushes_rejected_total";
/// The original aggregator's count of recorded pushes, kept so its dashboards keep working.
pub const RECORD_TOTAL: &str = "metrics_aggregator_record_total";
/// Log records a folding store could not decode and skipped (the DynamoDB fold).
pub const LOG_RECORDS_DROPPED: &str = "pum_log_records_dropped_total";
/// Billable operations of the platform and the store, by `op` ([`Op`]).
pub const STORE_OPERATIONS: &str = "pum_store_operations_total";

/// A billable operation counted in [`STORE_OPERATIONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// DynamoDB write request units (on-demand): 1 per KB of an item written, 2 in a
    /// transaction.
    DynamoWriteUnits,
    /// DynamoDB read request units (on-demand): 1 per 4 KB read strongly consistently, half
    /// that eventually consistently.
    DynamoReadUnits,
    /// Lambda invocations (requests).
    LambdaInvocations,
    /// Cloudflare Worker requests (invocations of its fetch handler).
    WorkerRequests,
    /// Durable Object requests: the Worker's requests to the shards, and the shards' alarms.
    DoRequests,
    /// Rows written to the shards' SQLite storage (`setAlarm` counts as one).
    SqliteRowsWritten,
    /// Workers KV writes (the shards' publications).
    KvWrites,
}

/// Counts of each [`Op`] in millionths, in [`Op::ALL`]'s order.
pub type Counts = [u128; Op::ALL.len()];

impl Op {
    /// Every op, in label order.
    pub const ALL: [Op; 7] = [
        Op::DynamoWriteUnits,
        Op::DynamoReadUnits,
        Op::LambdaInvocations,
        Op::WorkerRequests,
        Op::DoRequests,
        Op::SqliteRowsWritten,
        Op::KvWrites,
    ];

    /// The `op` label's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::DynamoWriteUnits => "dynamodb_write_units",
            Op::DynamoReadUnits => "dynamodb_read_units",
            Op::LambdaInvocations => "lambda_invocations",
            Op::WorkerRequests => "worker_requests",
            Op::DoRequests => "do_requests",
            Op::SqliteRowsWritten => "sqlite_rows_written",
            Op::KvWrites => "kv_writes",
        }
    }
}

/// Billable operations not yet stored, in millionths (a read unit can be half of one): a store
/// that carries them in the next write it makes takes them, and gives them back if that write
/// stores nothing.
#[derive(Debug, Default)]
pub struct Operations {
    pending: std::sync::Mutex<Counts>,
}

impl Operations {
    /// Counts `n` of `op`.
    pub fn count(&self, op: Op, n: f64) {
        let n = Self::millionths(n);
        if n > 0 {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p[op as usize] = p[op as usize].saturating_add(n);
        }
    }

    /// Takes what is pending, leaving nothing.
    pub fn take(&self) -> Counts {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Gives back what [`Operations::take`] took, for a write that stored nothing.
    pub fn give_back(&self, taken: Counts) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (have, back) in p.iter_mut().zip(taken) {
            *have = have.saturating_add(back);
        }
    }

    /// `n` of an op in the millionths [`Operations::take`] gives.
    pub fn millionths(n: f64) -> u128 {
        if n.is_finite() && n > 0.0 {
            (n * ONE as f64).round() as u128
        } else {
            0
        }
    }

    /// Adds `taken` (millionths, by [`Op`]) to `delta` as [`STORE_OPERATIONS`].
    pub fn add_to(delta: &mut Aggregate, taken: Counts) {
        for (op, n) in Op::ALL.into_iter().zip(taken) {
            if n > 0 {
                delta.add_counter(operations_key(op), n);
            }
        }
    }
}

/// `totals` without [`STORE_OPERATIONS`]: what the pushes themselves added, for comparing a
/// store's totals with an independent count.
pub fn without_operations(totals: &Aggregate) -> Aggregate {
    let mut data = Aggregate::new();
    for (key, value) in totals.iter() {
        if &**key.metric() != STORE_OPERATIONS {
            data.add_value(key.clone(), value.clone());
        }
    }
    data
}

/// [`STORE_OPERATIONS`] in `totals`, in units, by the `op` label's value.
pub fn operations_in(totals: &Aggregate) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for (key, value) in totals.iter() {
        if &**key.metric() == STORE_OPERATIONS
            && let Some((_, op)) = key.labels().first()
            && let SeriesValue::Counter { micros } = value
        {
            out.insert(op.to_string(), crate::aggregate::micros_to_f64(*micros));
        }
    }
    out
}

/// The series key of [`STORE_OPERATIONS`] for `op`.
pub fn operations_key(op: Op) -> SeriesKey {
    SeriesKey::new(STORE_OPERATIONS, &[("op", op.as_str())])
}

/// The values a label of an own metric takes.
#[derive(Clone, Copy, Debug)]
pub enum Values {
    /// These.
    Fixed(&'static [&'static str]),
    /// The codes of [`Reason`]s that refuse a whole push (`true`) or reject one sample (`false`).
    Reasons {
        /// Whether the push-level reasons.
        push: bool,
    },
}

impl Values {
    /// Every value, in order.
    pub fn list(self) -> Vec<String> {
        match self {
            Values::Fixed(values) => values.iter().map(|v| (*v).to_owned()).collect(),
            Values::Reasons { push } => Reason::ALL
                .iter()
                .filter(|r| r.is_push_level() == push)
                .map(|r| r.as_str().to_owned())
                .collect(),
        }
    }
}

/// The kind of an own metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram of seconds, on [`LATENCY_BUCKETS`].
    Seconds,
}

/// One own metric.
#[derive(Clone, Copy, Debug)]
pub struct OwnMetric {
    /// Its name.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its labels and their values.
    pub labels: &'static [(&'static str, Values)],
}

/// The own metrics that travel through the store (all counters).
pub const STORED: &[OwnMetric] = &[
    OwnMetric {
        name: PUSHES,
        help: "Pushes received on /record, by result: accepted (every sample), partial (some), rejected (none).",
        kind: Kind::Counter,
        labels: &[(
            "result",
            Values::Fixed(&["accepted", "partial", "rejected"]),
        )],
    },
    OwnMetric {
        name: SAMPLES_ACCEPTED,
        help: "Samples accepted and aggregated.",
        kind: Kind::Counter,
        labels: &[],
    },
    OwnMetric {
        name: SAMPLES_REJECTED,
        help: "Samples rejected, by reason.",
        kind: Kind::Counter,
        labels: &[("reason", Values::Reasons { push: false })],
    },
    OwnMetric {
        name: PUSHES_REJECTED,
        help: "Whole pushes refused, by reason.",
        kind: Kind::Counter,
        labels: &[("reason", Values::Reasons { push: true })],
    },
    OwnMetric {
        name: RECORD_TOTAL,
        help: "The number of times clients have posted to /record and had samples recorded. Try rate(metrics_aggregator_record_total[5m])*10 for a sense of how many pages are open.",
        kind: Kind::Counter,
        labels: &[],
    },
    OwnMetric {
        name: LOG_RECORDS_DROPPED,
        help: "Log records the fold could not decode and skipped rather than stop on them (AWS; each is logged with its key). Always 0 unless a record was corrupted.",
        kind: Kind::Counter,
        labels: &[],
    },
    OwnMetric {
        name: STORE_OPERATIONS,
        help: "Billable operations of the platform and the store, by op: dynamodb_write_units, dynamodb_read_units and lambda_invocations on AWS; worker_requests, do_requests, sqlite_rows_written and kv_writes on Cloudflare.",
        kind: Kind::Counter,
        labels: &[(
            "op",
            Values::Fixed(&[
                Op::DynamoWriteUnits.as_str(),
                Op::DynamoReadUnits.as_str(),
                Op::LambdaInvocations.as_str(),
                Op::WorkerRequests.as_str(),
                Op::DoRequests.as_str(),
                Op::SqliteRowsWritten.as_str(),
                Op::KvWrites.as_str(),
            ]),
        )],
    },
];

/// Buckets of the [`Kind::Seconds`] histograms: from 50 µs to 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// `pum_store_write_seconds`.
pub const STORE_WRITE_SECONDS: OwnMetric = OwnMetric {
    name: "pum_store_write_seconds",
    help: "Time to merge one push into the store, in seconds.",
    kind: Kind::Seconds,
    labels: &[],
};
/// `pum_store_read_seconds`.
pub const STORE_READ_SECONDS: OwnMetric = OwnMetric {
    name: "pum_store_read_seconds",
    help: "Time to read the totals from the store, in seconds.",
    kind: Kind::Seconds,
    labels: &[],
};
/// `pum_store_errors_total{op}`.
pub const STORE_ERRORS: OwnMetric = OwnMetric {
    name: "pum_store_errors_total",
    help: "Failed store operations, by op (read, write).",
    kind: Kind::Counter,
    labels: &[("op", Values::Fixed(&["read", "write"]))],
};
/// `pum_series`.
pub const SERIES: OwnMetric = OwnMetric {
    name: "pum_series",
    help: "Series held in the totals.",
    kind: Kind::Gauge,
    labels: &[],
};
/// `pum_series_skipped`.
pub const SERIES_SKIPPED: OwnMetric = OwnMetric {
    name: "pum_series_skipped",
    help: "Series not rendered because no stored or given allowlist describes their metric as stored (unknown metric, or buckets changed).",
    kind: Kind::Gauge,
    labels: &[],
};
/// `pum_snapshot_age_seconds`.
pub const SNAPSHOT_AGE: OwnMetric = OwnMetric {
    name: "pum_snapshot_age_seconds",
    help: "Seconds since the totals were last read successfully from the store.",
    kind: Kind::Gauge,
    labels: &[],
};
/// `pum_fold_lag_seconds`.
pub const FOLD_LAG: OwnMetric = OwnMetric {
    name: "pum_fold_lag_seconds",
    help: "For a store that folds a log of pushes into its totals (DynamoDB): seconds from the acceptance of the newest push the latest fold applied to that fold. Shown only for such a store.",
    kind: Kind::Gauge,
    labels: &[],
};
/// `pum_http_connections{listener}`.
pub const HTTP_CONNECTIONS: OwnMetric = OwnMetric {
    name: "pum_http_connections",
    help: "HTTP connections open now, by listener.",
    kind: Kind::Gauge,
    labels: &[("listener", Values::Fixed(&["ingest", "metrics"]))],
};
/// `pum_http_connections_closed_total{listener, reason}`.
pub const HTTP_CONNECTIONS_CLOSED: OwnMetric = OwnMetric {
    name: "pum_http_connections_closed_total",
    help: "HTTP connections closed, by listener and reason (closed, header_timeout, idle_timeout, evicted, refused, shutdown).",
    kind: Kind::Counter,
    labels: &[
        ("listener", Values::Fixed(&["ingest", "metrics"])),
        (
            "reason",
            Values::Fixed(&[
                "closed",
                "header_timeout",
                "idle_timeout",
                "evicted",
                "refused",
                "shutdown",
            ]),
        ),
    ],
};

/// The own metrics a process keeps and serves itself.
pub const PROCESS: &[OwnMetric] = &[
    STORE_WRITE_SECONDS,
    STORE_READ_SECONDS,
    STORE_ERRORS,
    SERIES,
    SERIES_SKIPPED,
    SNAPSHOT_AGE,
    FOLD_LAG,
    HTTP_CONNECTIONS,
    HTTP_CONNECTIONS_CLOSED,
];

/// One count, in fixed point.
const ONE: u128 = 1_000_000;

/// The series keys of pum's own counters, built once (cloning one shares its strings).
#[derive(Clone, Debug)]
pub(crate) struct OwnKeys {
    /// `pum_pushes_total` by result: accepted, partial, rejected.
    pushes: [SeriesKey; 3],
    samples_accepted: SeriesKey,
    record_total: SeriesKey,
    /// By reason, in [`Reason::ALL`] order.
    pushes_rejected: Vec<SeriesKey>,
    samples_rejected: Vec<SeriesKey>,
}

impl OwnKeys {
    pub(crate) fn new() -> Self {
        let by_reason = |metric: &str| {
            Reason::ALL
                .iter()
                .map(|r| SeriesKey::new(metric, &[("reason", r.as_str())]))
                .collect()
        };
        OwnKeys {
            pushes: ["accepted", "partial", "rejected"]
                .map(|r| SeriesKey::new(PUSHES, &[("result", r)])),
            samples_accepted: SeriesKey::new(SAMPLES_ACCEPTED, &[]),
            record_total: SeriesKey::new(RECORD_TOTAL, &[]),
            pushes_rejected: by_reason(PUSHES_REJECTED),
            samples_rejected: by_reason(SAMPLES_REJECTED),
        }
    }

    /// Adds `n` pushes refused for `reason` to `delta`.
    pub(crate) fn refused(&self, delta: &mut Aggregate, reason: Reason, n: u64) {
        let n = u128::from(n) * ONE;
        delta.add_counter(self.pushes[2].clone(), n);
        delta.add_counter(self.pushes_rejected[reason as usize].clone(), n);
    }

    /// Adds pum's own counters about one push to `delta`.
    pub(crate) fn count(
        &self,
        delta: &mut Aggregate,
        accepted: usize,
        rejected: &[Rejection],
        refused: Option<Reason>,
    ) {
        match (refused, rejected.is_empty()) {
            (Some(reason), _) => self.refused(delta, reason, 1),
            (None, true) => delta.add_counter(self.pushes[0].clone(), ONE),
            (None, false) => delta.add_counter(self.pushes[1].clone(), ONE),
        }
        if accepted > 0 {
            delta.add_counter(self.samples_accepted.clone(), accepted as u128 * ONE);
            delta.add_counter(self.record_total.clone(), ONE);
        }
        for r in rejected {
            delta.add_counter(self.samples_rejected[r.reason as usize].clone(), ONE);
        }
    }
}
