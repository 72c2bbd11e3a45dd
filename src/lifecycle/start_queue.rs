//! The queue of runner starts toward the engine: at most
//! `RUNNER_STARTS_AT_ONCE` creates in flight, the others waiting in arrival
//! order, so that a burst (a class opening the page together) neither
//! serialises on one call at a time nor floods the engine until every call
//! is slow. Tokio's semaphore is fair: a freed turn goes to the oldest
//! waiter, so no start waits behind one that came after it. Cold provisions
//! and warm-pool refills share the queue.

use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit, watch};

use crate::metrics::Metrics;

#[derive(Debug)]
pub struct StartQueue {
    turns: Semaphore,
    bound: usize,
    /// Starts waiting for a turn, for the metrics and the tests.
    waiting: watch::Sender<usize>,
    metrics: Arc<Metrics>,
}

/// A turn to start a runner, held while its create and start run.
#[derive(Debug)]
pub struct StartTurn<'a> {
    permit: Option<SemaphorePermit<'a>>,
    queue: &'a StartQueue,
}

/// One start counted as waiting until it gets its turn or is given up (a
/// client that went away drops its provision).
struct Waiting<'a>(&'a StartQueue);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.send_modify(|waiting| *waiting -= 1);
        self.0.report();
    }
}

impl StartQueue {
    pub fn new(bound: usize, metrics: Arc<Metrics>) -> Self {
        let queue = Self {
            turns: Semaphore::new(bound),
            bound,
            waiting: watch::Sender::new(0),
            metrics,
        };
        queue.report();
        queue
    }

    /// Waits for a turn, behind every start that asked before.
    pub async fn turn(&self) -> StartTurn<'_> {
        self.waiting.send_modify(|waiting| *waiting += 1);
        let counted = Waiting(self);
        self.report();
        let permit = self
            .turns
            .acquire()
            .await
            .expect("the start queue is never closed");
        drop(counted);
        StartTurn {
            permit: Some(permit),
            queue: self,
        }
    }

    /// Starts with the engine now.
    pub fn in_flight(&self) -> usize {
        self.bound - self.turns.available_permits()
    }

    /// Starts waiting for a turn now.
    pub fn waiting(&self) -> usize {
        *self.waiting.borrow()
    }

    /// Returns once at least `count` starts wait for a turn.
    pub async fn wait_for_waiting(&self, count: usize) {
        let mut waiting = self.waiting.subscribe();
        let _ = waiting.wait_for(|waiting| *waiting >= count).await;
    }

    fn report(&self) {
        self.metrics.runner_starts(self.in_flight(), self.waiting());
    }
}

impl Drop for StartTurn<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.queue.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_bounded_and_given_in_arrival_order() {
        let queue = Arc::new(StartQueue::new(2, Metrics::shared()));
        let first = queue.turn().await;
        let second = queue.turn().await;
        assert_eq!((queue.in_flight(), queue.waiting()), (2, 0));
        let (order, mut got) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (mine, order) = (queue.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let turn = mine.turn().await;
                order.send(i).unwrap();
                // Held until the test's next step frees another.
                tokio::task::yield_now().await;
                drop(turn);
            }));
            queue.wait_for_waiting(i + 1).await;
        }
        assert_eq!((queue.in_flight(), queue.waiting()), (2, 3));
        drop(first);
        drop(second);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let mut seen = Vec::new();
        while let Ok(i) = got.try_recv() {
            seen.push(i);
        }
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!((queue.in_flight(), queue.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn a_start_given_up_while_waiting_leaves_the_queue() {
        let queue = StartQueue::new(1, Metrics::shared());
        let held = queue.turn().await;
        let gave_up = tokio::time::timeout(std::time::Duration::ZERO, queue.turn()).await;
        assert!(gave_up.is_err());
        assert_eq!(queue.waiting(), 0);
        drop(held);
        drop(queue.turn().await);
        assert_eq!(queue.in_flight(), 0);
    }
}
