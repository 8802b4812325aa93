//! ALLO-PATCH: a session's bounded send queue, in place of a tokio mpsc channel.
//!
//! Every socket has one. A tokio mpsc allocates its slots 32 at a time and keeps the blocks it
//! filled: ~0.5 KB of channel (its fields are padded to cache lines) and ~1.6 KB per block of
//! 32 packet buffers, from the first packet on, per idle socket. This queue is a `VecDeque`
//! behind a mutex that is never held across an await: empty until something is sent, four
//! slots for a socket's usual trickle, and given back once a burst (a room's presence
//! announcements, a replay) has drained. It keeps the semantics the sessions rely on: a
//! bounded `try_send`, reserved permits, `close` by the receiver with what is queued still
//! readable, and `closed()` for whoever waits for the end.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

/// Slots kept once the queue is empty again; a larger buffer (after a burst) is freed.
const KEPT_CAPACITY: usize = 4;

/// A queue of at most `capacity` items (queued plus reserved), with its two ends.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            reserved: 0,
            receiver_closed: false,
            sender_gone: false,
            receiver_waker: None,
        }),
        capacity,
        closed: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Woken when the receiver closes: [`Sender::closed`].
    closed: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    /// Places held by [`Permit`]s not yet used.
    reserved: usize,
    receiver_closed: bool,
    sender_gone: bool,
    receiver_waker: Option<Waker>,
}

impl<T> State<T> {
    /// Whether one more item (sent or reserved) fits under `capacity`.
    fn has_room(&self, capacity: usize) -> bool {
        self.items.len() + self.reserved < capacity
    }

    /// The first item; once the queue is empty again, a buffer grown by a burst is freed.
    fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        if self.items.is_empty() && self.items.capacity() > KEPT_CAPACITY {
            self.items = VecDeque::new();
        }
        Some(item)
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` (its place already checked or reserved) and wakes the receiver.
    fn push(&self, mut state: MutexGuard<'_, State<T>>, item: T) {
        state.items.push_back(item);
        let waker = state.receiver_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The sending end, held by the session's socket.
pub(crate) struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or its receiver closed.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let state = self.0.lock();
        if state.receiver_closed {
            return Err(TrySendError::Closed(item));
        }
        if !state.has_room(self.0.capacity) {
            return Err(TrySendError::Full(item));
        }
        self.0.push(state, item);
        Ok(())
    }

    /// Holds a place for one item, to be sent with [`Permit::send`].
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        let mut state = self.0.lock();
        if state.receiver_closed {
            return Err(TrySendError::Closed(()));
        }
        if !state.has_room(self.0.capacity) {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(Permit { sender: Some(self) })
    }

    /// Whether the receiver closed: nothing more can be sent.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.lock().receiver_closed
    }

    /// Waits until the receiver closes.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.0.closed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close in between is not missed.
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.sender_gone = true;
        let waker = state.receiver_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.0.lock();
        f.debug_struct("Sender")
            .field("queued", &state.items.len())
            .field("reserved", &state.reserved)
            .field("closed", &state.receiver_closed)
            .finish()
    }
}

/// A place held in the queue for one item; given back if dropped unused.
pub(crate) struct Permit<'a, T> {
    sender: Option<&'a Sender<T>>,
}

impl<T> Permit<'_, T> {
    /// Queues `item` in the place held (dropped if the receiver closed meanwhile).
    pub(crate) fn send(mut self, item: T) {
        if let Some(sender) = self.sender.take() {
            let mut state = sender.0.lock();
            state.reserved -= 1;
            if !state.receiver_closed {
                sender.0.push(state, item);
            }
        }
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            sender.0.lock().reserved -= 1;
        }
    }
}

/// The receiving end, read by the session's transport.
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is empty and closed (or its sender gone).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.0.lock();
        if let Some(item) = state.pop() {
            return Poll::Ready(Some(item));
        }
        if state.receiver_closed || state.sender_gone {
            return Poll::Ready(None);
        }
        match &state.receiver_waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.receiver_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for the next item; `None` once the queue is empty and closed. Cancel-safe: an
    /// item is taken only when returned.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.0.lock();
        match state.pop() {
            Some(item) => Ok(item),
            None if state.receiver_closed || state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Refuses anything more; what is queued can still be read.
    pub(crate) fn close(&mut self) {
        self.0.lock().receiver_closed = true;
        self.0.closed.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.0.lock();
        f.debug_struct("Receiver")
            .field("queued", &state.items.len())
            .field("closed", &state.receiver_closed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_by_queued_and_reserved_items() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.try_send(1).unwrap();
        let permit = tx.try_reserve().unwrap();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        permit.send(3);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(3));
        // An unused permit gives its place back.
        drop(tx.try_reserve().unwrap());
        tx.try_send(4).unwrap();
        tx.try_send(5).unwrap();
        assert_eq!(rx.try_recv(), Ok(4));
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_more_but_hands_over_what_it_holds() {
        let (tx, mut rx) = channel::<u32>(4);
        tx.try_send(1).unwrap();
        let waiter = tokio::spawn(async move {
            tx.closed().await;
            assert!(tx.is_closed());
            assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        });
        tokio::task::yield_now().await;
        rx.close();
        waiter.await.unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn the_receiver_wakes_on_a_send_and_when_the_sender_goes() {
        let (tx, mut rx) = channel::<u32>(4);
        let reader = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.try_send(7).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(reader.await.unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn a_drained_burst_gives_its_buffer_back() {
        let (tx, mut rx) = channel::<u64>(128);
        for i in 0..100 {
            tx.try_send(i).unwrap();
        }
        assert!(rx.0.lock().items.capacity() >= 100);
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.0.lock().items.capacity(), 0);
        tx.try_send(0).unwrap();
        assert_eq!(rx.recv().await, Some(0));
        assert!(rx.0.lock().items.capacity() <= KEPT_CAPACITY);
    }
}
