//! Per-session mutual exclusion inside this process.
//!
//! The database decides who owns a session; these locks make concurrent
//! requests for one session wait for each other, so that twenty simultaneous
//! provisions of one session give one new runner and nineteen answers that
//! name it, instead of nineteen errors. Entries are dropped once unused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};

use tokio::sync::{Mutex, OwnedMutexGuard};

#[derive(Debug, Clone, Default)]
pub struct SessionLocks {
    held: Arc<SyncMutex<HashMap<String, Arc<Mutex<()>>>>>,
}

/// Holds a session's lock until dropped.
#[derive(Debug)]
pub struct SessionGuard {
    guard: Option<OwnedMutexGuard<()>>,
    key: String,
    locks: SessionLocks,
}

impl SessionLocks {
    pub async fn lock(&self, key: &str) -> SessionGuard {
        let mutex = self
            .held
            .lock()
            .expect("session lock table poisoned")
            .entry(key.to_owned())
            .or_default()
            .clone();
        SessionGuard {
            guard: Some(mutex.lock_owned().await),
            key: key.to_owned(),
            locks: self.clone(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        // Release the mutex (and its Arc) first, so the count below sees
        // only the table's reference and those of tasks still waiting.
        self.guard.take();
        let mut held = self.locks.held.lock().expect("session lock table poisoned");
        if held
            .get(&self.key)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
        {
            held.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_key_and_no_leftovers() {
        let locks = SessionLocks::default();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    let _guard = locks.lock("session").await;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_wait() {
        let locks = SessionLocks::default();
        let _a = locks.lock("a").await;
        let b = tokio::time::timeout(Duration::from_secs(1), locks.lock("b")).await;
        assert!(b.is_ok());
    }
}
