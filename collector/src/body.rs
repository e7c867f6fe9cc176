//! How standalone reads a push body: within `--body-timeout`, and counted against one memory
//! budget over all connections ([`BODY_BUDGET_BYTES`]), so that slow or unfinished bodies cannot
//! grow memory without bound.

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http_body_util::BodyExt;
use pum_shared::BodyError;
use pum_shared::app;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Push body bytes held in memory at once, over all connections: 32 MiB (or four of the largest
/// bodies, if that is more). A body waits for room, within its timeout, before more of it is
/// read; realistic beacons (about 1.4 KB) never wait.
pub const BODY_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// A push body, read within a timeout and a memory budget.
pub struct Reader<'b> {
    body: Body,
    budget: &'b Semaphore,
    timeout: Duration,
}

/// A body read whole, with the budget it holds until it is dropped.
pub struct Held<'b>(Bytes, #[allow(dead_code)] Option<SemaphorePermit<'b>>);

impl AsRef<[u8]> for Held<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl<'b> app::Body for Reader<'b> {
    type Bytes = Held<'b>;

    async fn read(self, max: usize) -> Result<Held<'b>, BodyError> {
        let read = read_body(self.body, max, self.budget);
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| BodyError::TimedOut)?
    }
}

/// Reads at most `max` bytes of body. A larger body is still read (and dropped) up to
/// `DRAIN_FACTOR * max`, so that the client gets its 413 instead of a reset connection; beyond
/// that the connection is cut. What is kept counts against `budget` (KiB permits).
async fn read_body(mut body: Body, max: usize, budget: &Semaphore) -> Result<Held<'_>, BodyError> {
    const DRAIN_FACTOR: usize = 16;
    // A body that arrives as one frame (a beacon read with its headers) is kept as it is; only a
    // body in several frames is copied together, into a buffer sized from Content-Length.
    let (mut first, mut joined, mut total) = (None::<Bytes>, Vec::new(), 0usize);
    let mut held: Option<SemaphorePermit<'_>> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Unreadable)?.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > max {
            if total > max.saturating_mul(DRAIN_FACTOR) {
                return Err(BodyError::TooLarge);
            }
            continue;
        }
        let kib = u32::try_from(data.len().div_ceil(1024)).unwrap_or(u32::MAX);
        let permit = budget.acquire_many(kib).await;
        let permit = permit.map_err(|_| BodyError::Unreadable)?;
        match held.as_mut() {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        if first.is_none() && joined.is_empty() {
            first = Some(data);
            continue;
        }
        if let Some(earlier) = first.take() {
            let hint = usize::try_from(body.size_hint().lower()).unwrap_or(0);
            joined.reserve((earlier.len() + data.len() + hint).min(max));
            joined.extend_from_slice(&earlier);
        }
        joined.extend_from_slice(&data);
    }
    if total > max {
        return Err(BodyError::TooLarge);
    }
    Ok(Held(first.unwrap_or_else(|| Bytes::from(joined)), held))
}

impl<'b> Reader<'b> {
    /// A reader of `body` that waits at most `timeout` and counts against `budget`.
    pub fn new(body: Body, budget: &'b Semaphore, timeout: Duration) -> Self {
        Reader {
            body,
            budget,
            timeout,
        }
    }
}
