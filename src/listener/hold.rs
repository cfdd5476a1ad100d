//! What an upgraded connection keeps of the listener's bookkeeping.
//!
//! hyper's connection future completes the moment it hands the socket to an
//! upgrade (a WebSocket tunnel), while the tunnel itself may run for hours. The
//! connection's place under `--max-connections` and its graceful-shutdown
//! watcher belong to the socket, not to that future: so each request carries a
//! [`ConnectionHold`] in its extensions, and whoever takes the socket over takes
//! the [`Held`] out of it and keeps it until the socket closes. Taking it also
//! tells the connection's watchdog that the head and idle deadlines no longer
//! apply (an open tunnel is neither a slow head nor idle). A connection that is
//! never upgraded gives everything back when its task ends, as before.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use http::Request;
use hyper::service::Service;
use hyper_util::server::graceful::Watcher;
use tokio::sync::OwnedSemaphorePermit;

use super::limits::Activity;

/// The connection's slot and shutdown watcher, for as long as it is kept.
pub struct Held {
    _slot: Option<OwnedSemaphorePermit>,
    _watcher: Option<Watcher>,
}

struct Shared {
    held: Mutex<Option<Held>>,
    activity: Option<Arc<Activity>>,
}

/// A request's handle on its connection's bookkeeping (in the request's extensions).
#[derive(Clone)]
pub struct ConnectionHold(Arc<Shared>);

impl ConnectionHold {
    pub(super) fn new(
        slot: Option<OwnedSemaphorePermit>,
        watcher: Watcher,
        activity: Option<Arc<Activity>>,
    ) -> ConnectionHold {
        ConnectionHold(Arc::new(Shared {
            held: Mutex::new(Some(Held {
                _slot: slot,
                _watcher: Some(watcher),
            })),
            activity,
        }))
    }

    /// Takes the connection over: its slot and watcher stay with the returned
    /// [`Held`] until it is dropped, and its deadlines stop. `None` when already taken.
    pub fn take(&self) -> Option<Held> {
        let held = self.0.held.lock().ok()?.take();
        if held.is_some() {
            if let Some(a) = &self.0.activity {
                a.upgraded.store(true, Ordering::Relaxed);
            }
        }
        held
    }

    /// Gives everything back unless it was taken (the connection's task is over).
    pub(super) fn release(&self) {
        if let Ok(mut h) = self.0.held.lock() {
            h.take();
        }
    }
}

/// A service whose requests carry the connection's [`ConnectionHold`].
#[derive(Clone)]
pub(super) struct Holding<S> {
    inner: S,
    hold: ConnectionHold,
}

impl<S> Holding<S> {
    pub(super) fn new(inner: S, hold: ConnectionHold) -> Holding<S> {
        Holding { inner, hold }
    }
}

impl<S, B> Service<Request<B>> for Holding<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: Request<B>) -> S::Future {
        req.extensions_mut().insert(self.hold.clone());
        self.inner.call(req)
    }
}
