//! The queues a store serves, by name: each one's settings, who to wake
//! when it has messages, its broadcast feed and consumer count
//! (`store::Queue`). Shared by the embedded and the Redis store; only the
//! embedded one keeps the queue's state inside it.

use super::crypt::{CryptError, Keys};
use super::state::QueueState;
use super::store::{Queue, QueueConfig, StoreError};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Catalog {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

impl Catalog {
    pub fn new(queues: HashMap<String, Arc<Queue>>) -> Catalog {
        Catalog {
            queues: Mutex::new(queues),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Queue>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &str) -> Result<Arc<Queue>, StoreError> {
        self.map()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::UnknownQueue(name.to_string()))
    }

    /// Every queue, by name.
    pub fn all(&self) -> Vec<Arc<Queue>> {
        let mut v: Vec<_> = self.map().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The dead-letter queue of `queue`.
    pub fn dead_letter_of(&self, queue: &Queue) -> Result<Arc<Queue>, StoreError> {
        let name = queue
            .dead_letter()
            .ok_or_else(|| StoreError::NoDeadLetter(queue.name.clone()))?;
        self.get(&name)
    }

    /// Refuses a write into `queue` when it, or where its dead letters
    /// go, is encrypted and no key was given.
    pub fn check_key(&self, queue: &Queue, keys: &Keys) -> Result<(), StoreError> {
        let dead_letter_encrypted = self.dead_letter_of(queue).is_ok_and(|d| d.encrypted());
        if (queue.encrypted() || dead_letter_encrypted) && keys.current_id().is_none() {
            return Err(CryptError::NoKey.into());
        }
        Ok(())
    }

    /// Adds new queues (their ids from `ids`) and updates the settings of
    /// existing ones.
    pub fn configure(&self, queues: &[QueueConfig], ids: &Arc<AtomicU64>) {
        let mut map = self.map();
        for q in queues {
            match map.get(&q.name) {
                Some(existing) => existing.reconfigure(q),
                None => {
                    let state = QueueState::with_ids(q.settings.clone(), ids.clone());
                    map.insert(q.name.clone(), Arc::new(Queue::new(q, state)));
                }
            }
        }
    }
}
