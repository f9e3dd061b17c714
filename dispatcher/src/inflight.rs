//! One handler at a time per message in this process. Kafka delivers at least once, so
//! two `ready` records of one message are normal (render restarted before its offsets
//! were committed, a rebalance handed a partition over mid-record); handled at the same
//! moment, both would pass the terminal check and both would send. The second waits for
//! the first here, then finds its outcome recorded and repeats the event instead.

use sendmill_wire::MessageId;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct MessageLocks {
    held: Mutex<HashMap<MessageId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a message is handled; the last one out removes the entry.
pub struct MessageGuard<'a> {
    locks: &'a MessageLocks,
    id: MessageId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl MessageLocks {
    pub async fn lock(&self, id: MessageId) -> MessageGuard<'_> {
        let lock = self
            .held
            .lock()
            .expect("not poisoned")
            .entry(id)
            .or_default()
            .clone();
        MessageGuard {
            locks: self,
            id,
            guard: Some(lock.lock_owned().await),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock().expect("not poisoned").len()
    }
}

impl Drop for MessageGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self.locks.held.lock().expect("not poisoned");
        // Only the map's own reference left: nobody holds or waits for this message.
        if held
            .get(&self.id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            held.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_handler_of_a_message_waits_for_the_first() {
        let locks = Arc::new(MessageLocks::default());
        let id = MessageId::generate();
        let first = locks.lock(id).await;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let second = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _guard = locks.lock(id).await;
                tx.send(()).unwrap();
            })
        };
        // Another message is not held up.
        drop(locks.lock(MessageId::generate()).await);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut rx)
                .await
                .is_err(),
            "the second handler ran while the first held the message"
        );
        drop(first);
        rx.await.unwrap();
        second.await.unwrap();
        assert_eq!(locks.len(), 0, "entries are removed once nobody holds them");
    }
}
