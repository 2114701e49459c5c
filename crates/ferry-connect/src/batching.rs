//! Turns a driver's stream of rows into a stream of record batches.

use arrow::array::RecordBatch;
use ferry_core::Result;
use futures::{Stream, StreamExt};

use crate::BatchStream;

/// Feeds each message of `messages` to `step`, which appends it to a batch and returns the batch
/// once it is full; at the end `step(None)` flushes what is left. A driver error ends the stream.
pub(crate) fn batches<'a, S, M, F>(messages: S, step: F) -> BatchStream<'a>
where
    S: Stream<Item = Result<M>> + Send + 'a,
    F: FnMut(Option<M>) -> Option<Result<RecordBatch>> + Send + 'a,
    M: 'a,
{
    let state = (Box::pin(messages), step, false);
    Box::pin(futures::stream::unfold(
        state,
        |(mut messages, mut step, done)| async move {
            if done {
                return None;
            }
            loop {
                match messages.next().await {
                    Some(Ok(m)) => {
                        if let Some(batch) = step(Some(m)) {
                            return Some((batch, (messages, step, false)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (messages, step, true))),
                    None => return step(None).map(|batch| (batch, (messages, step, true))),
                }
            }
        },
    ))
}
