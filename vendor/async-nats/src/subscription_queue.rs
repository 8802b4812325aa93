//! A subscription's message queue (Allo's patch; ALLO-PATCH.md): one sender (the connection
//! handler's `Subscription`), one receiver (the `Subscriber`), bounded by
//! `subscription_capacity`, as tokio's mpsc was. tokio's channel is ~0.5 KB of cache-padded
//! state plus a first block of 32 slots allocated up front, per subscription however idle;
//! this is one ~100-byte allocation, and its queue is allocated only while messages wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::Message;

/// Slots an emptied queue may keep; a larger one (after a burst) is freed.
const KEPT_SLOTS: usize = 8;

pub(crate) enum TrySendError<T> {
    Full(T),
    Closed(T),
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<Box<Message>>>,
    capacity: usize,
    waker: AtomicWaker,
    /// The receiver closed or dropped: sends fail.
    receiver_closed: AtomicBool,
    /// The sender dropped: the receiver ends once the queue is empty.
    sender_gone: AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Box<Message>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
pub(crate) struct Sender(Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Receiver(Arc<Shared>);

pub(crate) fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        waker: AtomicWaker::new(),
        receiver_closed: AtomicBool::new(false),
        sender_gone: AtomicBool::new(false),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    pub(crate) fn try_send(&self, message: Box<Message>) -> Result<(), TrySendError<Box<Message>>> {
        if self.0.receiver_closed.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(message));
        }
        {
            let mut queue = self.0.queue();
            if queue.len() >= self.0.capacity {
                return Err(TrySendError::Full(message));
            }
            queue.push_back(message);
        }
        self.0.waker.wake();
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.0.receiver_closed.load(Ordering::Acquire)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.sender_gone.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl Receiver {
    /// No more sends; what is queued can still be received.
    pub(crate) fn close(&mut self) {
        self.0.receiver_closed.store(true, Ordering::Release);
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Box<Message>>> {
        if let Some(message) = self.pop() {
            return Poll::Ready(Some(message));
        }
        self.0.waker.register(cx.waker());
        // Again after registering: a send between the first look and the registration woke
        // no one.
        if let Some(message) = self.pop() {
            return Poll::Ready(Some(message));
        }
        if self.0.sender_gone.load(Ordering::Acquire)
            || self.0.receiver_closed.load(Ordering::Acquire)
        {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn pop(&self) -> Option<Box<Message>> {
        let mut queue = self.0.queue();
        let message = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEPT_SLOTS {
            *queue = VecDeque::new();
        }
        message
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.receiver_closed.store(true, Ordering::Release);
        self.0.queue().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;

    fn message(text: &'static str) -> Box<Message> {
        Box::new(Message {
            subject: "s".into(),
            reply: None,
            payload: text.into(),
            headers: None,
            status: None,
            description: None,
            length: text.len(),
        })
    }

    fn poll(receiver: &mut Receiver) -> Poll<Option<Box<Message>>> {
        receiver.poll_recv(&mut Context::from_waker(noop_waker_ref()))
    }

    #[test]
    fn messages_arrive_in_order_up_to_the_bound_then_the_end_after_the_sender_goes() {
        let (sender, mut receiver) = channel(2);
        assert!(poll(&mut receiver).is_pending());
        assert!(sender.try_send(message("a")).is_ok());
        assert!(sender.try_send(message("b")).is_ok());
        assert!(matches!(sender.try_send(message("c")), Err(TrySendError::Full(_))));
        drop(sender);
        let texts: Vec<_> = std::iter::from_fn(|| match poll(&mut receiver) {
            Poll::Ready(Some(m)) => Some(m.payload),
            _ => None,
        })
        .collect();
        assert_eq!(texts, ["a", "b"]);
        assert!(matches!(poll(&mut receiver), Poll::Ready(None)));
    }

    #[test]
    fn a_closed_receiver_refuses_sends_and_still_yields_what_was_queued() {
        let (sender, mut receiver) = channel(8);
        assert!(sender.try_send(message("a")).is_ok());
        receiver.close();
        assert!(sender.is_closed());
        assert!(matches!(sender.try_send(message("b")), Err(TrySendError::Closed(_))));
        assert!(matches!(poll(&mut receiver), Poll::Ready(Some(_))));
        assert!(matches!(poll(&mut receiver), Poll::Ready(None)));
    }
}
