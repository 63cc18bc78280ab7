//! A virtual-time, single-threaded executor for the simulator (tests only).
//!
//! Installed on a thread, it takes over what the runtime seam offers (spawn, sleep,
//! timeouts, the wall clock), so that the production partition code runs unchanged in the
//! simulator: time moves only when every task waits, straight to the next timer; tasks run
//! in the order they were woken; so a run is reproducible from its seed. Every task belongs
//! to an *owner* (a simulated node): a crash drops all of its tasks at once, wherever they
//! were waiting, as a killed process stops.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// The owner of the simulator's own tasks (the network, the controller, the clients).
pub const WORLD: u32 = u32::MAX;

thread_local! {
    static CURRENT: RefCell<Option<Rc<SimRuntime>>> = const { RefCell::new(None) };
}

/// The simulated runtime installed on this thread, if any.
pub fn current() -> Option<Rc<SimRuntime>> {
    CURRENT.with(|c| c.borrow().clone())
}

struct Task {
    owner: u32,
    future: Pin<Box<dyn Future<Output = ()>>>,
}

/// Task ids woken and not yet polled (wakers must be `Send`, hence the mutex; it is only
/// ever taken on this thread).
#[derive(Default)]
struct ReadyQueue(Mutex<VecDeque<usize>>);

struct TaskWaker {
    id: usize,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.0.lock().expect("single-threaded").push_back(self.id);
    }
}

pub struct SimRuntime {
    now_us: Cell<u64>,
    /// Milliseconds since the Unix epoch at virtual time 0 (what `now_ms` adds to).
    epoch_ms: i64,
    tasks: RefCell<Vec<Option<Task>>>,
    free: RefCell<Vec<usize>>,
    ready: Arc<ReadyQueue>,
    /// Wakers by (due time, registration order).
    timers: RefCell<BTreeMap<(u64, u64), Waker>>,
    timer_seq: Cell<u64>,
    /// The owner of the task being polled (inherited by the tasks it spawns).
    polling_owner: Cell<u32>,
}

/// Uninstalls the runtime from the thread when dropped, and drops every task left.
pub struct Installed(Rc<SimRuntime>);

impl std::ops::Deref for Installed {
    type Target = SimRuntime;
    fn deref(&self) -> &SimRuntime {
        &self.0
    }
}

impl Installed {
    pub fn handle(&self) -> Rc<SimRuntime> {
        self.0.clone()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
        // Dropping a task may drop values whose destructors spawn or wake: take them out
        // first.
        let tasks = std::mem::take(&mut *self.0.tasks.borrow_mut());
        drop(tasks);
        self.0.timers.borrow_mut().clear();
    }
}

impl SimRuntime {
    /// Installs a fresh runtime on this thread, at virtual time 0.
    pub fn install() -> Installed {
        let rt = Rc::new(SimRuntime {
            now_us: Cell::new(0),
            epoch_ms: 1_700_000_000_000,
            tasks: RefCell::default(),
            free: RefCell::default(),
            ready: Arc::default(),
            timers: RefCell::default(),
            timer_seq: Cell::new(0),
            polling_owner: Cell::new(WORLD),
        });
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            assert!(c.is_none(), "a simulated runtime is already installed on this thread");
            *c = Some(rt.clone());
        });
        Installed(rt)
    }

    /// Virtual microseconds since the start.
    pub fn now_us(&self) -> u64 {
        self.now_us.get()
    }

    pub fn now_ms(&self) -> u64 {
        self.now_us.get() / 1000
    }

    pub(super) fn wall_clock_ms(&self) -> i64 {
        self.epoch_ms + self.now_ms() as i64
    }

    /// Spawns a task owned by the owner of the task running now.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) {
        self.spawn_as(self.polling_owner.get(), future);
    }

    /// Spawns a task owned by `owner`.
    pub fn spawn_as(&self, owner: u32, future: impl Future<Output = ()> + 'static) {
        let task = Task { owner, future: Box::pin(future) };
        let id = match self.free.borrow_mut().pop() {
            Some(id) => {
                self.tasks.borrow_mut()[id] = Some(task);
                id
            }
            None => {
                let mut tasks = self.tasks.borrow_mut();
                tasks.push(Some(task));
                tasks.len() - 1
            }
        };
        self.ready.0.lock().expect("single-threaded").push_back(id);
    }

    /// Drops every task of `owner` (a crash): nothing it was doing continues.
    pub fn kill(&self, owner: u32) {
        assert_ne!(self.polling_owner.get(), owner, "a task cannot kill its own owner");
        let mut doomed = Vec::new();
        {
            let mut tasks = self.tasks.borrow_mut();
            for (id, slot) in tasks.iter_mut().enumerate() {
                if slot.as_ref().is_some_and(|t| t.owner == owner) {
                    doomed.push(slot.take());
                    self.free.borrow_mut().push(id);
                }
            }
        }
        // Their destructors may wake other tasks: run them with nothing borrowed.
        drop(doomed);
    }

    /// A future that completes once virtual time reaches `at_us`.
    pub fn sleep_until(self: &Rc<Self>, at_us: u64) -> impl Future<Output = ()> {
        let rt = self.clone();
        std::future::poll_fn(move |cx| {
            if rt.now_us.get() >= at_us {
                return Poll::Ready(());
            }
            let seq = rt.timer_seq.get() + 1;
            rt.timer_seq.set(seq);
            rt.timers.borrow_mut().insert((at_us, seq), cx.waker().clone());
            Poll::Pending
        })
    }

    pub fn sleep(self: &Rc<Self>, d: Duration) -> impl Future<Output = ()> {
        // At least one microsecond: a zero sleep still lets time move (as a timer does).
        let at = self.now_us.get() + (d.as_micros() as u64).max(1);
        self.sleep_until(at)
    }

    /// Polls woken tasks until none is left.
    fn run_ready(&self) {
        loop {
            let next = self.ready.0.lock().expect("single-threaded").pop_front();
            let Some(id) = next else { return };
            let taken = self.tasks.borrow_mut().get_mut(id).and_then(Option::take);
            let Some(mut task) = taken else { continue };
            let waker = Waker::from(Arc::new(TaskWaker { id, ready: self.ready.clone() }));
            self.polling_owner.set(task.owner);
            let done = task.future.as_mut().poll(&mut Context::from_waker(&waker)).is_ready();
            self.polling_owner.set(WORLD);
            if done {
                drop(task);
                self.free.borrow_mut().push(id);
            } else {
                self.tasks.borrow_mut()[id] = Some(task);
            }
        }
    }

    /// Runs until virtual time `end_us` (every task woken by then has run), or until
    /// `stop` says so between two instants.
    pub fn run_until(&self, end_us: u64, mut stop: impl FnMut() -> bool) {
        loop {
            self.run_ready();
            if stop() {
                return;
            }
            let next = self.timers.borrow().keys().next().copied();
            match next {
                Some((at, _)) if at <= end_us => {
                    self.now_us.set(self.now_us.get().max(at));
                    // Every timer due at this instant fires together.
                    let due: Vec<Waker> = {
                        let mut timers = self.timers.borrow_mut();
                        let later = timers.split_off(&(at + 1, 0));
                        std::mem::replace(&mut *timers, later).into_values().collect()
                    };
                    due.into_iter().for_each(Waker::wake);
                }
                _ => {
                    self.now_us.set(self.now_us.get().max(end_us));
                    return;
                }
            }
        }
    }

    /// Tasks alive (for tests of the runtime).
    pub fn task_count(&self) -> usize {
        self.tasks.borrow().iter().filter(|t| t.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::SimRuntime;

    #[test]
    fn tasks_wake_in_virtual_time_order_and_a_kill_stops_an_owner() {
        let rt = SimRuntime::install();
        let log = Rc::new(RefCell::new(Vec::new()));
        for (owner, ms) in [(1, 30u64), (2, 10), (1, 20)] {
            let log = log.clone();
            rt.spawn_as(owner, async move {
                crate::rt::sleep(Duration::from_millis(ms)).await;
                log.borrow_mut().push((owner, crate::rt::sim::current().unwrap().now_ms()));
                crate::rt::sleep(Duration::from_millis(100)).await;
                log.borrow_mut().push((owner, 999));
            });
        }
        rt.run_until(50_000, || false);
        assert_eq!(*log.borrow(), vec![(2, 10), (1, 20), (1, 30)]);
        rt.kill(1);
        assert_eq!(rt.task_count(), 1);
        rt.run_until(1_000_000, || false);
        assert_eq!(log.borrow().last(), Some(&(2, 999)));
        assert_eq!(rt.task_count(), 0);
        assert_eq!(rt.now_ms(), 1000);
    }
}
