//! Settings of a SQLite database file.

use std::time::Duration;

use tributary_core::DEFAULT_MAX_EVENT_BYTES;

/// How hard SQLite works to make a commit survive power loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Every commit waits for an fsync of the WAL: a commit that returned survives power
    /// loss. The default, and the only safe setting for a relay's source: with `Normal` a
    /// commit can vanish after the relay already published it (a phantom event).
    #[default]
    Full,
    /// Commits return before the fsync; the last commits can be lost on power loss (not on a
    /// process crash). Faster; for data that can be rebuilt.
    Normal,
}

impl Synchronous {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Settings for [`crate::SqliteDatabase::open`].
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    pub synchronous: Synchronous,
    /// The largest event (data plus metadata) accepted, in bytes.
    pub max_event_bytes: usize,
    /// The most units of work committed together by one commit.
    pub max_units_per_commit: usize,
    /// How many read connections may be open at once.
    pub read_connections: usize,
    /// How long a connection waits for another process's lock before reporting `Unavailable`.
    pub busy_timeout: Duration,
    /// How often subscriptions look for commits made by other processes.
    pub poll_every: Duration,
    /// Whether opening an existing file runs `PRAGMA quick_check` first, refusing a damaged
    /// file at start (naming it) rather than failing the reads that hit its damaged pages.
    /// It reads the whole file once: measured here about 0.8 s for a 110 MB file (roughly
    /// 130 MB/s, page cache warm), so a large file pays seconds at every start.
    pub quick_check_on_open: bool,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_units_per_commit: 512,
            read_connections: 8,
            busy_timeout: Duration::from_secs(5),
            poll_every: Duration::from_millis(500),
            quick_check_on_open: true,
        }
    }
}

impl SqliteConfig {
    pub fn with_synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }
    pub fn with_max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = n;
        self
    }
    pub fn with_max_units_per_commit(mut self, n: usize) -> Self {
        self.max_units_per_commit = n.max(1);
        self
    }
    pub fn with_read_connections(mut self, n: usize) -> Self {
        self.read_connections = n.max(1);
        self
    }
    pub fn with_busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }
    pub fn with_poll_every(mut self, d: Duration) -> Self {
        self.poll_every = d;
        self
    }
    pub fn with_quick_check_on_open(mut self, check: bool) -> Self {
        self.quick_check_on_open = check;
        self
    }
}
