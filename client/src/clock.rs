//! The one place gw reads the wall clock. Decision code (the compiler, the session decision, the state
//! machine) takes time as an argument; the runtimes read it here and pass it in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // the clock module: the one place allowed to read it
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
