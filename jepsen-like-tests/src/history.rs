//! The recorded history: every operation's invocation and completion, and every fault's start and end,
//! in the order they happened, with times relative to the start of the run.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    /// Completed, with effect.
    Ok,
    /// Completed, certainly without effect.
    Fail,
    /// Outcome unknown (timeout, connection lost): it may or may not have taken effect.
    Info,
}

/// The process of nemesis events.
pub const NEMESIS: i64 = -1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub index: usize,
    /// Milliseconds since the start of the run.
    pub time_ms: f64,
    pub process: i64,
    pub kind: Kind,
    /// read | write | cas, or the fault (kill, pause, partition, ...).
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    /// The member that served it (for a fault: the members affected, in `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// The store revision the answer carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A history being recorded by many tasks.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            start: Instant::now(),
            events: Arc::default(),
        }
    }
}

impl Recorder {
    /// Appends an event (its index and time are filled in) and returns its index.
    pub fn record(&self, mut e: Event) -> usize {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        e.index = events.len();
        e.time_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        events.push(e);
        events.len() - 1
    }

    pub fn event(process: i64, kind: Kind, f: &str, key: Option<&str>, value: Value) -> Event {
        Event {
            index: 0,
            time_ms: 0.0,
            process,
            kind,
            f: f.into(),
            key: key.map(str::to_string),
            value,
            node: None,
            revision: None,
            error: None,
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// An operation: an invocation paired with its completion (`None`: never completed).
#[derive(Debug, Clone)]
pub struct Op {
    pub invoke: Event,
    pub complete: Option<Event>,
}

impl Op {
    pub fn outcome(&self) -> Kind {
        self.complete.as_ref().map_or(Kind::Info, |c| c.kind)
    }
}

/// Pairs each client invocation with the next event of the same process.
pub fn pair(events: &[Event]) -> Vec<Op> {
    let mut open: std::collections::HashMap<i64, usize> = Default::default();
    let mut ops: Vec<Op> = Vec::new();
    for e in events.iter().filter(|e| e.process != NEMESIS) {
        if e.kind == Kind::Invoke {
            open.insert(e.process, ops.len());
            ops.push(Op {
                invoke: e.clone(),
                complete: None,
            });
        } else if let Some(i) = open.remove(&e.process) {
            ops[i].complete = Some(e.clone());
        }
    }
    ops
}
