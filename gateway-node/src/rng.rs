//! The data plane's one source of randomness. Decision code (backend choice, the session decision)
//! takes draws as arguments; the runtimes draw them here.

use rand::RngExt;

/// A draw uniform over `u64`.
#[allow(clippy::disallowed_methods)] // the RNG module: the one place allowed to create it
pub fn draw() -> u64 {
    rand::rng().random()
}

/// A fresh 96-bit nonce (a session token's).
#[allow(clippy::disallowed_methods)] // the RNG module
pub fn nonce() -> [u8; 12] {
    rand::rng().random()
}
