//! What the server knows about each connection: which phase it is in and since when, so that
//! the longest-waiting one can be shed when a new connection needs its place.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ConnPhase {
    /// Waiting for a request or receiving its head (idle keep-alive, or a slow client).
    Waiting = 0,
    /// Receiving a request body.
    Body = 1,
    /// The router handles a request, or its response is being sent.
    Handling = 2,
}

/// Shared by a connection's guard, its service and the server's table.
pub(crate) struct ConnState {
    epoch: Instant,
    phase: AtomicU8,
    /// Microseconds after `epoch` when the current phase began.
    since: AtomicU64,
    /// Woken when the phase changes (a guard waiting for a response to finish).
    waker: Mutex<Option<Waker>>,
    /// Cancelled to shed the connection.
    pub evict: CancellationToken,
}

impl ConnState {
    pub fn new(epoch: Instant, evict: CancellationToken) -> Arc<Self> {
        let state = Arc::new(Self {
            epoch,
            phase: AtomicU8::new(ConnPhase::Waiting as u8),
            since: AtomicU64::new(0),
            waker: Mutex::new(None),
            evict,
        });
        state.since.store(state.now_us(), Ordering::Relaxed);
        state
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn phase(&self) -> ConnPhase {
        match self.phase.load(Ordering::Acquire) {
            0 => ConnPhase::Waiting,
            1 => ConnPhase::Body,
            _ => ConnPhase::Handling,
        }
    }

    /// When the current phase began.
    pub fn since(&self) -> Instant {
        self.epoch + Duration::from_micros(self.since.load(Ordering::Relaxed))
    }

    /// Microseconds after the server's epoch when the current phase began (for ordering).
    pub fn since_us(&self) -> u64 {
        self.since.load(Ordering::Relaxed)
    }

    pub fn set(&self, phase: ConnPhase) {
        self.since.store(self.now_us(), Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub fn register(&self, waker: &Waker) {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
    }

    /// Whether shedding it costs no work in progress: it is idle, or stalled in a request's
    /// head or body.
    pub fn evictable(&self) -> bool {
        self.phase() != ConnPhase::Handling && !self.evict.is_cancelled()
    }
}
