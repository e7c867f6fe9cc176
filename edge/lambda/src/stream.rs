//! The fold function's input: a DynamoDB Streams event of the log table, in the form Lambda
//! sends when the event source mapping has a tumbling window (`TumblingWindowInSeconds`).
//!
//! Why the tumbling window: only that form names the stream shard (`shardId`) the records come
//! from, and the fold keeps one checkpoint per shard ([`pum_dynamodb::fold`]). The fold keeps no
//! window state: each invocation folds its records and answers an empty state.

use aws_lambda_events::event::dynamodb::{TimeWindowEvent, TimeWindowEventResponse};
use pum_dynamodb::fold::LogRecord;
use pum_dynamodb::{KEY, RECORD, REGION};
use serde_dynamo::AttributeValue;

/// A stream event that the fold cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The event names no shard: the event source mapping has no tumbling window.
    #[error(
        "the stream event names no shardId: give the event source mapping a tumbling window \
         (TumblingWindowInSeconds)"
    )]
    NoShard,
    /// A record has no sequence number.
    #[error("stream record {0:?} has no sequence number")]
    NoSequence(String),
}

/// The fold's answer to a batch it folded: an empty window state (Lambda takes an answer without
/// a `state` as a failed invocation) and no failed records.
pub fn folded() -> TimeWindowEventResponse {
    TimeWindowEventResponse::default()
}

/// The event's shard and its records, as the fold takes them.
pub fn log_records(event: &TimeWindowEvent) -> Result<(String, Vec<LogRecord>), StreamError> {
    let shard = event
        .time_window_properties
        .shard_id
        .clone()
        .ok_or(StreamError::NoShard)?;
    let mut out = Vec::with_capacity(event.dynamo_db_event.records.len());
    for r in &event.dynamo_db_event.records {
        let change = &r.change;
        let sequence = change
            .sequence_number
            .clone()
            .ok_or_else(|| StreamError::NoSequence(r.event_id.clone()))?;
        let image = &change.new_image;
        let string = |name: &str| match image.get(name) {
            Some(AttributeValue::S(s)) => s.clone(),
            _ => String::new(),
        };
        out.push(LogRecord {
            sequence,
            insert: r.event_name == "INSERT",
            key: string(KEY),
            region: string(REGION),
            record: match image.get(RECORD) {
                Some(AttributeValue::B(b)) => b.clone(),
                _ => Vec::new(),
            },
        });
    }
    Ok((shard, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> TimeWindowEvent {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/dynamodb-stream-window.json"
        ))
        .expect("fixture");
        serde_json::from_str(&text).expect("a tumbling-window DynamoDB stream event")
    }

    #[test]
    fn a_window_event_gives_its_shard_and_records_in_order() {
        let (shard, records) = log_records(&fixture()).expect("records");
        assert_eq!(shard, "shardId-00000001700000000000-abcdef01");
        assert_eq!(records.len(), 2);
        assert!(records[0].insert);
        assert_eq!(records[0].key, "conformance-00000001");
        assert_eq!(records[0].region, "eu-west-1");
        assert_eq!(records[0].record, vec![1, 2, 3, 4]);
        assert_eq!(records[0].sequence, "111100000000000000001");
        assert!(!records[1].insert, "a TTL removal");
    }

    #[test]
    fn the_answer_has_a_state_and_no_failures() {
        let answer = serde_json::to_value(folded()).expect("serialises");
        assert_eq!(
            answer,
            serde_json::json!({"state": {}, "batchItemFailures": []})
        );
    }

    #[test]
    fn an_event_without_a_shard_is_refused() {
        let mut event = fixture();
        event.time_window_properties.shard_id = None;
        assert_eq!(log_records(&event), Err(StreamError::NoShard));
    }
}
