//! The one place gw reads the wall clock. Decision code (the compiler, the session decision, the state
//! machine) takes time as an argument; the runtimes read it here and pass it in.
//!
//! TEST-ONLY override, for the fault suite's `clock` nemesis: after `skew_from(FILE)` (called by a
//! binary only when given its hidden `GW_UNSAFE_CLOCK_SKEW_DIR`), the clock adds a signed offset in
//! milliseconds read from FILE (re-read at most every 100 ms; missing or unreadable: 0), so that a run
//! can step or slew one process's clock without touching the machine's. Monotonic clocks (timeouts,
//! intervals) are not affected. Without the override the clock costs one more atomic load.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that names the skew directory (each process reads the file named after
/// itself there: `member-ID`, or a gateway node's name).
pub const SKEW_DIR_ENV: &str = "GW_UNSAFE_CLOCK_SKEW_DIR";

struct Skew {
    file: PathBuf,
    offset_ms: AtomicI64,
    /// When (real ms) the file was last read.
    read_at: AtomicU64,
}

static SKEW: OnceLock<Skew> = OnceLock::new();

/// Turns the test-only override on when `GW_UNSAFE_CLOCK_SKEW_DIR` is set: this process's clock then
/// follows `DIR/NAME`. Returns the file, for the caller to log.
pub fn skew_from_env(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(SKEW_DIR_ENV)?;
    let file = PathBuf::from(dir).join(name);
    let _ = SKEW.set(Skew::new(file.clone()));
    Some(file)
}

#[allow(clippy::disallowed_methods)] // the clock module: the one place allowed to read it
fn real_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Skew {
    fn new(file: PathBuf) -> Skew {
        Skew {
            file,
            offset_ms: AtomicI64::new(0),
            read_at: AtomicU64::new(0),
        }
    }

    /// `real`, skewed by the file's offset (read again when the last read is 100 ms old).
    fn apply(&self, real: u64) -> u64 {
        if real.saturating_sub(self.read_at.load(Ordering::Relaxed)) >= 100 {
            self.read_at.store(real, Ordering::Relaxed);
            let offset = std::fs::read_to_string(&self.file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            self.offset_ms.store(offset, Ordering::Relaxed);
        }
        real.saturating_add_signed(self.offset_ms.load(Ordering::Relaxed))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let real = real_ms();
    match SKEW.get() {
        None => real,
        Some(s) => s.apply(real),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skew_file_steps_the_clock_and_is_read_again_after_100_ms() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("member-1");
        let s = Skew::new(file.clone());
        assert_eq!(s.apply(1_000_000), 1_000_000, "no file: no skew");
        std::fs::write(&file, "-5000").unwrap();
        assert_eq!(s.apply(1_000_050), 1_000_050, "read 50 ms ago: not yet");
        assert_eq!(s.apply(1_000_100), 995_100);
        std::fs::write(&file, "3000\n").unwrap();
        assert_eq!(s.apply(1_000_250), 1_003_250);
        assert_eq!(s.apply(2_000), 2_000 + 3_000);
        std::fs::write(&file, "-9999999").unwrap();
        assert_eq!(s.apply(1_000_400), 0, "skewed back, never below 0");
    }
}
