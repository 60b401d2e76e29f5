//! One async lock per key (runtime id), so that two operations on the same
//! runtime never interleave inside this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub struct KeyGuard {
    _guard: OwnedMutexGuard<()>,
}

impl KeyedLocks {
    /// The lock for `key` if nobody holds it now.
    pub fn try_lock(&self, key: &str) -> Option<KeyGuard> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        lock.try_lock_owned().ok().map(|g| KeyGuard { _guard: g })
    }

    /// Keys whose lock is held right now: operations in flight.
    pub fn held(&self) -> std::collections::HashSet<String> {
        let map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, l)| l.try_lock().is_err())
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub async fn lock(&self, key: &str) -> KeyGuard {
        let lock = {
            // A poisoned map only means another thread panicked while holding
            // it; the map itself is still consistent.
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Drop entries nobody holds, so the map does not grow forever.
            if map.len() > 1024 {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(key.to_string()).or_default().clone()
        };
        KeyGuard {
            _guard: lock.lock_owned().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn same_key_serialises_other_keys_do_not() {
        let locks = Arc::new(KeyedLocks::default());
        let a = locks.lock("a").await;
        // Another key is free.
        let _b = locks.lock("b").await;
        let locks2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = locks2.lock("a").await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
    }
}
