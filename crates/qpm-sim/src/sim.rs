//! The simulator core: the state behind one lock (qubesd is single-threaded
//! too), persistence after every change, and the event bus that feeds
//! `admin.Events` subscribers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qpm_wire::Event;

use crate::api::{self, AdminFilter, Call, Context, Handled, QubeHost};
use crate::model::System;

/// Persists the state after each change.
pub trait Persist: Send {
    /// Writes the whole state durably (atomically replacing the previous).
    fn save(&mut self, sys: &System) -> std::io::Result<()>;
}

/// State and everything that changes with it.
pub struct Shared {
    /// The system.
    pub sys: System,
    /// File side effects.
    pub host: Box<dyn QubeHost + Send>,
    /// Pending clone tokens.
    pub clone_tokens: HashMap<String, (String, String)>,
    /// Test-only: uuid of the next created qube.
    pub next_uuid: Option<String>,
    /// Where the state is persisted (none: in memory only).
    pub persist: Option<Box<dyn Persist>>,
}

/// Largest number of queued events per subscriber before it is dropped
/// (a subscriber that does not read must not make the simulator grow).
const SUBSCRIBER_QUEUE: usize = 4096;

struct Subscriber {
    id: u64,
    tx: SyncSender<Event>,
}

/// The simulator.
pub struct Sim {
    shared: Mutex<Shared>,
    filter: Arc<dyn AdminFilter>,
    subscribers: Mutex<Vec<Subscriber>>,
    next_id: AtomicU64,
    /// Added to every call, overlapping for concurrent calls.
    pub latency: Duration,
    /// Whether the test-only uuid control is enabled (conformance mode).
    pub uuid_control: bool,
}

impl Sim {
    /// A simulator over this state.
    pub fn new(shared: Shared, filter: Arc<dyn AdminFilter>) -> Self {
        Self {
            shared: Mutex::new(shared),
            filter,
            subscribers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            latency: Duration::ZERO,
            uuid_control: false,
        }
    }

    /// Locks the state. A handler that panicked while holding the lock
    /// cannot leave a half-done change behind (changes are applied last),
    /// so a poisoned lock is recovered.
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The visibility filter.
    pub fn filter(&self) -> &dyn AdminFilter {
        &*self.filter
    }

    /// Sets the uuid of the next created qube (conformance mode only).
    pub fn set_next_uuid(&self, uuid: Option<String>) -> bool {
        if !self.uuid_control {
            return false;
        }
        self.lock().next_uuid = uuid;
        true
    }

    /// Handles one Admin API call: state change, persistence, events.
    pub fn call(&self, call: Call<'_>) -> Handled {
        let mut guard = self.lock();
        let shared = &mut *guard;
        let mut ctx = Context {
            sys: &mut shared.sys,
            filter: &*self.filter,
            host: &mut *shared.host,
            next_uuid: shared.next_uuid.take(),
            clone_tokens: &mut shared.clone_tokens,
        };
        let handled = api::handle(&mut ctx, call);
        if self.uuid_control {
            shared.next_uuid = None;
        }
        if handled.mutated {
            shared.sys.generation = shared.sys.generation.wrapping_add(1);
        }
        if handled.mutated
            && let Some(p) = shared.persist.as_mut()
            && let Err(e) = p.save(&shared.sys)
        {
            tracing::error!("saving the simulator state failed: {e}");
        }
        self.publish(&handled.events);
        handled
    }

    /// Runs `f` with the state locked, then persists and publishes `events`
    /// it returns (for changes made outside the Admin API: qube starts from
    /// qrexec, restarts).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut Shared, &mut Vec<Event>) -> T) -> T {
        let mut guard = self.lock();
        let mut events = Vec::new();
        let out = f(&mut guard, &mut events);
        if !events.is_empty() {
            let shared = &mut *guard;
            shared.sys.generation = shared.sys.generation.wrapping_add(1);
            if let Some(p) = shared.persist.as_mut()
                && let Err(e) = p.save(&shared.sys)
            {
                tracing::error!("saving the simulator state failed: {e}");
            }
        }
        self.publish(&events);
        out
    }

    /// Runs `f` with an API context (for changes made by the router:
    /// starting targets, disposables); persists and publishes like a call.
    pub fn with_context<T>(&self, f: impl FnOnce(&mut Context<'_>, &mut Vec<Event>) -> T) -> T {
        self.with_state(|shared, events| {
            let mut ctx = Context {
                sys: &mut shared.sys,
                filter: &*self.filter,
                host: &mut *shared.host,
                next_uuid: None,
                clone_tokens: &mut shared.clone_tokens,
            };
            f(&mut ctx, events)
        })
    }

    fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| {
            events.iter().all(|e| match s.tx.try_send(e.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            })
        });
    }

    /// Subscribes to events; returns an id (for [`unsubscribe`]) and the
    /// receiving end.
    ///
    /// [`unsubscribe`]: Sim::unsubscribe
    pub fn subscribe(&self) -> (u64, Receiver<Event>) {
        let (tx, rx) = sync_channel(SUBSCRIBER_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscriber { id, tx });
        (id, rx)
    }

    /// Drops a subscription.
    pub fn unsubscribe(&self, id: u64) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != id);
    }

    /// Number of live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}
