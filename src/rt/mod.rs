//! The runtime seam: the few things the broker needs from an async runtime (spawning,
//! timers, wall-clock time, a wake-up primitive), in one place so the rest of the code does
//! not name glommio and could move to another io_uring runtime.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// The shard-local semaphore (async, FIFO, `!Send`): connection windows, one-at-a-time locks.
pub use glommio::sync::{Semaphore, StaticPermit};

/// Runs `fut` to completion on a single-threaded executor made on this thread: the CLI's
/// commands and tests (the broker's shards are started by `shard::runtime`).
pub fn block_on<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    Ok(ex.run(fut))
}

#[cfg(test)]
pub mod sim;

/// Spawns a task on the current shard and lets it run detached.
pub fn spawn<T: 'static>(fut: impl Future<Output = T> + 'static) {
    #[cfg(test)]
    if let Some(sim) = sim::current() {
        return sim.spawn(async move {
            fut.await;
        });
    }
    glommio::spawn_local(fut).detach();
}

/// A spawned task's result: `None` when the task was dropped before it finished.
pub struct JoinHandle<T>(futures_channel::oneshot::Receiver<T>);

impl<T> Future for JoinHandle<T> {
    type Output = Option<T>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<T>> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

/// Spawns a task on the current shard and returns a handle to await its result.
pub fn spawn_joinable<T: 'static>(fut: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    let (tx, rx) = futures_channel::oneshot::channel();
    spawn(async move {
        let _ = tx.send(fut.await);
    });
    JoinHandle(rx)
}

/// Sleeps on the shard's timer wheel.
pub async fn sleep(d: Duration) {
    #[cfg(test)]
    if let Some(sim) = sim::current() {
        return sim.sleep(d).await;
    }
    glommio::timer::sleep(d).await
}

/// Runs `fut` for at most `d`; `None` when the time ran out first.
pub async fn timeout<T>(d: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let fut = async { Some(fut.await) };
    let timer = async {
        sleep(d).await;
        None
    };
    futures_lite::future::or(fut, timer).await
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    #[cfg(test)]
    if let Some(sim) = sim::current() {
        return sim.wall_clock_ms();
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Yields to other tasks of the shard.
pub async fn yield_now() {
    futures_lite::future::yield_now().await
}

/// A single-consumer wake-up flag: `notify` sets it, `notified` waits for it and clears it.
/// Notifications before the wait are not lost; several collapse into one.
#[derive(Clone, Default)]
pub struct Notify {
    inner: Rc<RefCell<NotifyState>>,
}

#[derive(Default)]
struct NotifyState {
    set: bool,
    waker: Option<Waker>,
}

impl Notify {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn notify(&self) {
        let mut s = self.inner.borrow_mut();
        s.set = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    pub async fn notified(&self) {
        std::future::poll_fn(|cx| {
            let mut s = self.inner.borrow_mut();
            if s.set {
                s.set = false;
                Poll::Ready(())
            } else {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Many waiters for one event (new data in a partition): each waiter takes a ticket and is
/// woken at the next `notify_all`.
#[derive(Default)]
pub struct WaitList {
    waiters: RefCell<Vec<futures_channel::oneshot::Sender<()>>>,
}

impl WaitList {
    /// A future that completes at the next `notify_all` (or when the list is dropped).
    pub fn wait(&self) -> impl Future<Output = ()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.waiters.borrow_mut().push(tx);
        async move {
            let _ = rx.await;
        }
    }

    pub fn notify_all(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }

    pub fn len(&self) -> usize {
        self.waiters.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops tickets whose waiters gave up (timed out).
    pub fn prune(&self) {
        self.waiters.borrow_mut().retain(|w| !w.is_canceled());
    }
}
