//! One socket's subscribe and unsubscribe requests take effect in the order
//! the client sent them (CONTRACT §7: exactly once per socket, whatever the
//! calls).
//!
//! socketioxide runs each message's handler as its own task, so two requests
//! sent back to back (an `unsubscribe:job` then a `subscribe:job`) could
//! otherwise be applied in the other order, leaving a socket acked as
//! subscribed but unsubscribed. Extractors run in arrival order, before the
//! handler's task starts: the [`Turn`] extractor takes a ticket there, and the
//! handler waits for its ticket before it changes anything. A turn ends when
//! the handler is done with it (dropped), early returns included.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use socketioxide::adapter::LocalAdapter;
use socketioxide::handler::FromMessageParts;
use socketioxide::socket::Socket;
use tokio::sync::Notify;

/// Tickets of one socket, in arrival order.
#[derive(Debug, Default)]
pub struct Sequencer {
    issued: AtomicU64,
    /// The ticket whose turn it is, and tickets finished before their turn.
    state: Mutex<(u64, BTreeSet<u64>)>,
    turned: Notify,
}

impl Sequencer {
    fn finish(&self, ticket: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if ticket == state.0 {
            state.0 += 1;
            loop {
                let next = state.0;
                if !state.1.remove(&next) {
                    break;
                }
                state.0 += 1;
            }
        } else {
            state.1.insert(ticket);
        }
        drop(state);
        self.turned.notify_waiters();
    }

    fn current(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

/// A message's place in its socket's order (see the module docs).
#[derive(Debug)]
pub struct Turn(Option<(Arc<Sequencer>, u64)>);

impl Turn {
    /// Waits until every request sent before this one is done.
    pub async fn wait(&self) {
        let Some((sequencer, ticket)) = &self.0 else { return };
        loop {
            let turned = sequencer.turned.notified();
            if sequencer.current() >= *ticket {
                return;
            }
            turned.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((sequencer, ticket)) = self.0.take() {
            sequencer.finish(ticket);
        }
    }
}

impl FromMessageParts<LocalAdapter> for Turn {
    type Error = Infallible;

    fn from_message_parts(
        socket: &Arc<Socket<LocalAdapter>>,
        _: &mut socketioxide_core::Value,
        _: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let turn = socket.extensions.get::<Arc<Sequencer>>().map(|sequencer| {
            let ticket = sequencer.issued.fetch_add(1, Ordering::AcqRel);
            (sequencer, ticket)
        });
        Ok(Self(turn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(sequencer: &Arc<Sequencer>) -> Turn {
        Turn(Some((sequencer.clone(), sequencer.issued.fetch_add(1, Ordering::AcqRel))))
    }

    #[tokio::test]
    async fn turns_come_in_ticket_order_whatever_order_the_tasks_run() {
        let sequencer = Arc::new(Sequencer::default());
        let (first, second, third) = (turn(&sequencer), turn(&sequencer), turn(&sequencer));
        let log = Arc::new(Mutex::new(Vec::new()));
        let run = |t: Turn, n: u32| {
            let log = log.clone();
            tokio::spawn(async move {
                t.wait().await;
                log.lock().unwrap_or_else(PoisonError::into_inner).push(n);
            })
        };
        let c = run(third, 3);
        let b = run(second, 2);
        tokio::task::yield_now().await;
        drop(first); // finished without waiting: the others go on
        let _ = tokio::join!(b, c);
        assert_eq!(*log.lock().unwrap_or_else(PoisonError::into_inner), vec![2, 3]);
    }
}
