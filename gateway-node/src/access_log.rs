//! The access log (`--access-log PATH`, `-` for stdout): one JSON line per request (a sampled share of
//! them with `--access-log-sample`), written when the response has been sent (or abandoned) by a
//! writer thread, so that the request path never waits on the disk. Lines that find the writer's queue
//! full are dropped and counted (`gw_node_access_log_dropped`). The fields are in `Record`; README
//! "Access log" documents them.

use crate::metrics::Metrics;
use serde::Serialize;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Lines queued for the writer at most.
const QUEUE: usize = 16_384;

/// One request, as logged.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// When the request arrived (RFC 3339, ms).
    pub time: String,
    /// The client's address.
    pub client: String,
    /// The socket it arrived on.
    pub socket: String,
    pub method: String,
    pub host: String,
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub protocol: String,
    /// `namespace/gateway/listener`, when one took the request.
    pub listener: Option<String>,
    /// `HTTPRoute namespace/name`, when one matched.
    pub route: Option<String>,
    pub rule: Option<usize>,
    /// `namespace/service:port` of the backend chosen.
    pub backend: Option<String>,
    /// `ip:port` of its endpoint.
    pub endpoint: Option<String>,
    pub status: u16,
    /// gRPC status, for gRPC requests refused by the node (backends' are in their trailers).
    pub grpc_status: Option<u32>,
    /// Request start to response headers, and to the end of the response body.
    pub duration_ms: f64,
    pub total_ms: f64,
    /// Request start to the backend's response headers.
    pub upstream_ms: Option<f64>,
    /// The request's Content-Length, when it gave one.
    pub request_bytes: Option<u64>,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// Whether the response body was sent to its end (false: the client left, or the backend failed
    /// mid-body).
    pub completed: bool,
    /// The store revision of the routing table that served it.
    pub revision: u64,
    /// Session persistence: a hash of the session id (never the id or the token).
    pub session: Option<String>,
    /// `new`, `followed`, `confirmed` (followed after reading the store), `failed-over`.
    pub affinity: Option<&'static str>,
    /// Why the request failed, for failures (`connect`, `timeout`, `no-route`, ...).
    pub error: Option<&'static str>,
}

/// FNV-1a of a session id, in hex: the same id gives the same hash on every node.
pub fn session_hash(id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub struct AccessLog {
    /// Share of requests logged, as a threshold over a `u64` draw.
    threshold: u64,
    tx: SyncSender<String>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Opens `path` (`-`: stdout) for appending and starts the writer thread.
    pub fn open(path: &str, sample: f64, metrics: Arc<Metrics>) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(AccessLog {
            threshold: threshold(sample),
            tx,
            metrics,
        })
    }

    /// Whether a request with this draw is logged.
    pub fn sampled(&self, draw: u64) -> bool {
        self.threshold > 0 && draw <= self.threshold
    }

    pub fn write(&self, r: &Record) {
        let Ok(line) = serde_json::to_string(r) else {
            return;
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}

/// A logged request whose response body is on its way: counts the body's bytes and writes the line at
/// its end, or when it is dropped unfinished (`completed: false`).
pub struct LogOnEnd {
    record: Option<Record>,
    log: Arc<AccessLog>,
    start: Instant,
}

impl LogOnEnd {
    pub fn new(record: Record, log: Arc<AccessLog>, start: Instant) -> LogOnEnd {
        LogOnEnd {
            record: Some(record),
            log,
            start,
        }
    }

    pub fn count(&mut self, bytes: usize) {
        if let Some(r) = &mut self.record {
            r.response_bytes += bytes as u64;
        }
    }

    /// Writes the line (once).
    pub fn finish(&mut self, completed: bool) {
        if let Some(mut r) = self.record.take() {
            r.completed = completed;
            r.total_ms = ms(self.start.elapsed());
            self.log.write(&r);
        }
    }
}

impl Drop for LogOnEnd {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// A duration in milliseconds, to the microsecond.
pub fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// The draw threshold of a sampling share (clamped to 0..=1; 1 logs every request, 0 none).
fn threshold(sample: f64) -> u64 {
    let s = sample.clamp(0.0, 1.0);
    if s >= 1.0 {
        u64::MAX
    } else if s <= 0.0 {
        0
    } else {
        (s * u64::MAX as f64) as u64
    }
}

/// The writer: lines as they come, flushed whenever the queue is empty.
fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(line) = next {
            if writeln!(out, "{line}").is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_shares_and_session_hashes() {
        assert!(threshold(1.0) == u64::MAX && threshold(7.0) == u64::MAX);
        assert_eq!(threshold(0.0), 0);
        let half = threshold(0.5);
        assert!(half > u64::MAX / 2 - 1_000_000 && half < u64::MAX / 2 + 1_000_000);
        assert_eq!(session_hash("abc"), session_hash("abc"));
        assert_ne!(session_hash("abc"), session_hash("abd"));
        assert_eq!(session_hash("").len(), 16);
    }
}
