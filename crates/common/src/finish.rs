//! Requests that finish once started, without a task of their own.
//!
//! hyper drops a request's future when its connection closes. Dropped half way, a handler
//! abandons a transaction or a pool checkout at an arbitrary await, and under load such
//! cancellations were seen to strand sqlx pool permits until every acquire timed out. A
//! task per request prevents that, but costs a spawn and two hand-offs between tasks on
//! every request, most of which finish where they started. [`finish`] runs the request in
//! the connection's own task instead and moves it into a task only if it is dropped
//! unfinished: the request completes either way, and only its answer is lost.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::FutureExt as _;
/// Where finished-in-a-task work is tracked (`Shared::requests`).
pub use tokio_util::task::TaskTracker;

/// Runs `work` to completion, tracked by `tracker` (so that shutdown waits for it), in the
/// caller's task while the caller waits and in a task of its own once the caller stops
/// waiting. A panic in `work` is caught and returned, as a task's would be.
pub fn finish<F>(
    tracker: &TaskTracker,
    work: F,
) -> impl Future<Output = Result<F::Output, Box<dyn Any + Send>>> + Send + use<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tracker
        .track_future(Finish { work: Some(Box::pin(AssertUnwindSafe(work).catch_unwind())), tracker: tracker.clone() })
}

type Caught<F> = futures::future::CatchUnwind<AssertUnwindSafe<F>>;

struct Finish<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// `None` once finished. Boxed, so that it can move into a task when dropped.
    work: Option<Pin<Box<Caught<F>>>>,
    tracker: TaskTracker,
}

impl<F> Future for Finish<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = <Caught<F> as Future>::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let work = self.work.as_mut().expect("a finished request is not polled again");
        let output = ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for Finish<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        let Some(work) = self.work.take() else { return };
        // Outside a runtime (the runtime itself is going), there is nowhere to finish.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.tracker.track_future(work));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn dropped_unfinished_it_finishes_in_a_task_that_shutdown_waits_for() {
        let tracker = TaskTracker::new();
        let done = Arc::new(AtomicBool::new(false));
        let work = {
            let done = done.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                done.store(true, Ordering::SeqCst);
            }
        };
        let caller = finish(&tracker, work);
        // The caller gives up after one poll, as hyper does when the client leaves.
        assert!(tokio::time::timeout(Duration::from_millis(1), caller).await.is_err());
        assert!(!done.load(Ordering::SeqCst));
        assert_eq!(tracker.len(), 1, "the detached request is tracked");
        tracker.close();
        tracker.wait().await;
        assert!(done.load(Ordering::SeqCst), "the request finished without its caller");
    }

    #[tokio::test]
    async fn a_panic_is_returned_not_propagated() {
        let tracker = TaskTracker::new();
        let caught = finish(&tracker, async { panic!("boom") }).await;
        assert!(caught.is_err());
        assert_eq!(finish(&tracker, async { 7 }).await.ok(), Some(7));
        assert!(tracker.is_empty());
    }
}
