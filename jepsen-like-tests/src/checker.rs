//! Checkers over a recorded history. Each returns a verdict: valid, invalid (with the anomaly and the
//! history excerpt that shows it) or unknown (ran out of its search budget) — unknown is not a pass.

use crate::history::{Event, Kind, Op};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    True,
    False,
    Unknown,
}

impl Validity {
    /// False when anything was found wrong, else unknown when nothing could be checked, else true.
    pub fn of(anomalies: usize, checked: usize) -> Validity {
        match (anomalies, checked) {
            (0, 0) => Validity::Unknown,
            (0, _) => Validity::True,
            _ => Validity::False,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub valid: Validity,
    /// Operations the checker looked at.
    pub ops: usize,
    /// What it found (anomalies, counts).
    pub details: Value,
}

/// A register operation, as the linearizability search sees it.
#[derive(Debug, Clone)]
struct RegOp {
    f: RegF,
    /// Index of the invocation event (for excerpts).
    index: usize,
    call: f64,
    /// `None`: outcome unknown — may take effect at any time after its call, or never.
    ret: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
enum RegF {
    Read(Option<i64>),
    Write(i64),
    Cas(i64, i64),
}

fn as_value(v: &Value) -> Option<i64> {
    v.as_i64()
}

/// The register's operations of one key: failed ones had no effect and are left out, as are reads of
/// unknown outcome, and writes of unknown outcome whose value nobody ever observed (values are unique:
/// such a write, if it happened, was overwritten unseen, so leaving it out loses no linearization —
/// and it keeps the search from branching on every timed-out write).
fn reg_ops(ops: &[&Op]) -> Vec<RegOp> {
    let observed: HashSet<i64> = ops
        .iter()
        .filter(|o| o.outcome() == Kind::Ok)
        .filter_map(|o| match o.invoke.f.as_str() {
            "read" => o.complete.as_ref().and_then(|c| as_value(&c.value)),
            "cas" => o.invoke.value[0].as_i64(),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for op in ops {
        let outcome = op.outcome();
        if outcome == Kind::Fail {
            continue;
        }
        let ret =
            (outcome == Kind::Ok).then(|| op.complete.as_ref().map_or(f64::MAX, |c| c.time_ms));
        let f = match op.invoke.f.as_str() {
            "read" => match (&op.complete, ret) {
                (Some(c), Some(_)) => RegF::Read(as_value(&c.value)),
                _ => continue,
            },
            "write" => RegF::Write(op.invoke.value.as_i64().unwrap_or(0)),
            "cas" => RegF::Cas(
                op.invoke.value[0].as_i64().unwrap_or(0),
                op.invoke.value[1].as_i64().unwrap_or(0),
            ),
            _ => continue,
        };
        let unseen = match &f {
            RegF::Write(v) | RegF::Cas(_, v) => !observed.contains(v),
            RegF::Read(_) => false,
        };
        if outcome == Kind::Info && unseen {
            continue;
        }
        out.push(RegOp {
            f,
            index: op.invoke.index,
            call: op.invoke.time_ms,
            ret,
        });
    }
    out
}

fn step(state: Option<i64>, f: &RegF) -> Option<Option<i64>> {
    match f {
        RegF::Read(v) => (*v == state).then_some(state),
        RegF::Write(v) => Some(Some(*v)),
        RegF::Cas(from, to) => (state == Some(*from)).then_some(Some(*to)),
    }
}

enum Search {
    Linearizable,
    /// Not linearizable: the operations linearized in the deepest attempt, and the first one that
    /// could not be placed after them.
    Not {
        deepest: Vec<usize>,
        stuck: usize,
    },
    OutOfBudget,
}

/// Wing & Gong's search with Lowe's memoisation (the "just-in-time" linearizability check): walk the
/// calls and returns in time order, linearize a call when the model allows it, backtrack when a return
/// is reached whose operation has not been linearized. Operations of unknown outcome return at +∞.
fn linearizable(ops: &[RegOp], budget: u64) -> Search {
    #[derive(Clone, Copy)]
    struct Entry {
        op: usize,
        is_call: bool,
        time: f64,
    }
    let mut entries: Vec<Entry> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        entries.push(Entry {
            op: i,
            is_call: true,
            time: o.call,
        });
        entries.push(Entry {
            op: i,
            is_call: false,
            time: o.ret.unwrap_or(f64::INFINITY),
        });
    }
    // Calls before returns at equal times (overlap is the generous reading).
    entries.sort_by(|a, b| a.time.total_cmp(&b.time).then(b.is_call.cmp(&a.is_call)));
    let n = entries.len();
    // A doubly linked list over the entries, and where each op's entries are.
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n)
        .map(|i| if i == 0 { usize::MAX } else { i - 1 })
        .collect();
    let mut head = if n == 0 { usize::MAX } else { 0 };
    let mut ret_of = vec![0usize; ops.len()];
    for (i, e) in entries.iter().enumerate() {
        if !e.is_call {
            ret_of[e.op] = i;
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut state: Option<i64> = None;
    let mut cur = head;
    let mut steps = 0u64;
    let mut deepest: Vec<usize> = Vec::new();
    let mut stuck = 0usize;

    // Unlinks entry i (call or return) from the list.
    fn unlink(i: usize, head: &mut usize, next: &mut [usize], prev: &mut [usize], n: usize) {
        let (p, nx) = (prev[i], next[i]);
        if p == usize::MAX {
            *head = nx;
        } else {
            next[p] = nx;
        }
        if nx < n {
            prev[nx] = p;
        }
    }
    fn relink(i: usize, head: &mut usize, next: &mut [usize], prev: &mut [usize], n: usize) {
        let (p, nx) = (prev[i], next[i]);
        if p == usize::MAX {
            *head = i;
        } else {
            next[p] = i;
        }
        if nx < n {
            prev[nx] = i;
        }
    }

    while head < n {
        steps += 1;
        if steps > budget {
            return Search::OutOfBudget;
        }
        if cur >= n {
            // Every remaining entry was tried: backtrack.
            let Some((call, s)) = stack.pop() else {
                return Search::Not { deepest, stuck };
            };
            let op = entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = s;
            relink(ret_of[op], &mut head, &mut next, &mut prev, n);
            relink(call, &mut head, &mut next, &mut prev, n);
            cur = next[call];
            continue;
        }
        let e = entries[cur];
        if e.is_call {
            let o = &ops[e.op];
            if let Some(new_state) = step(state, &o.f) {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((lin.clone(), new_state)) {
                    stack.push((cur, state));
                    state = new_state;
                    linearized = lin;
                    unlink(cur, &mut head, &mut next, &mut prev, n);
                    unlink(ret_of[e.op], &mut head, &mut next, &mut prev, n);
                    if stack.len() > deepest.len() {
                        deepest = stack.iter().map(|(c, _)| entries[*c].op).collect();
                    }
                    cur = head;
                    continue;
                }
            }
            cur = next[cur];
        } else {
            // A return whose op is not linearized yet. Reaching an unknown op's return (+∞) means every
            // completed op is linearized: the rest may never have happened.
            if ops[e.op].ret.is_none() {
                return Search::Linearizable;
            }
            if stack.len() >= deepest.len() {
                stuck = e.op;
            }
            let Some((call, s)) = stack.pop() else {
                return Search::Not { deepest, stuck };
            };
            let op = entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = s;
            relink(ret_of[op], &mut head, &mut next, &mut prev, n);
            relink(call, &mut head, &mut next, &mut prev, n);
            cur = next[call];
        }
    }
    Search::Linearizable
}

fn describe(e: &Event) -> Value {
    json!({"index": e.index, "time_ms": (e.time_ms * 10.0).round() / 10.0, "process": e.process, "kind": e.kind, "f": e.f,
           "value": e.value, "node": e.node, "revision": e.revision, "error": e.error})
}

/// Linearizability of every key's register, checked independently (per-key partitioning).
pub fn register_linearizable(ops: &[Op], budget_per_key: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|o| matches!(o.invoke.f.as_str(), "read" | "write" | "cas"))
    {
        if let Some(k) = op.invoke.key.as_deref() {
            by_key.entry(k).or_default().push(op);
        }
    }
    let mut anomalies = Vec::new();
    let mut unknown = Vec::new();
    let mut checked = 0;
    for (key, kops) in &by_key {
        let regs = reg_ops(kops);
        checked += regs.len();
        match linearizable(&regs, budget_per_key) {
            Search::Linearizable => {}
            Search::OutOfBudget => unknown.push(key.to_string()),
            Search::Not { deepest, stuck } => {
                let stuck_op = &regs[stuck];
                // The excerpt: the key's operations overlapping the unplaceable one, and the last few
                // linearized before it.
                let lo = stuck_op.call - 2000.0;
                let hi = stuck_op.ret.unwrap_or(f64::MAX);
                let excerpt: Vec<Value> = kops
                    .iter()
                    .filter(|o| {
                        o.complete.as_ref().map_or(f64::MAX, |c| c.time_ms) >= lo
                            && o.invoke.time_ms <= hi
                    })
                    .flat_map(|o| {
                        std::iter::once(describe(&o.invoke)).chain(o.complete.iter().map(describe))
                    })
                    .collect();
                let what = match &stuck_op.f {
                    RegF::Read(v) => format!(
                        "read of {v:?} that no linearization allows (a stale read, or a lost write)"
                    ),
                    RegF::Write(v) => format!("write of {v} that cannot be placed"),
                    RegF::Cas(a, b) => format!("cas {a}->{b} that cannot be placed"),
                };
                anomalies.push(
                    json!({"key": key, "anomaly": what, "op_index": stuck_op.index,
                                      "linearized_before": deepest.len(), "excerpt": excerpt}),
                );
            }
        }
    }
    let valid = if !anomalies.is_empty() {
        Validity::False
    } else if !unknown.is_empty() {
        Validity::Unknown
    } else {
        Validity::True
    };
    Verdict {
        valid,
        ops: checked,
        details: json!({"keys": by_key.len(), "anomalies": anomalies, "unknown_keys": unknown}),
    }
}

/// Revisions never go backwards in real time: an operation invoked after another completed never
/// observes an older revision.
pub fn revisions_monotonic(ops: &[Op]) -> Verdict {
    let mut done: Vec<(f64, u64, usize)> = ops
        .iter()
        .filter_map(|o| {
            o.complete
                .as_ref()
                .filter(|c| c.kind == Kind::Ok)
                .and_then(|c| c.revision.map(|r| (c.time_ms, r, c.index)))
        })
        .collect();
    done.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut invoked: Vec<(&Op, u64)> = ops
        .iter()
        .filter_map(|o| {
            o.complete
                .as_ref()
                .filter(|c| c.kind == Kind::Ok)
                .and_then(|c| c.revision)
                .map(|r| (o, r))
        })
        .collect();
    invoked.sort_by(|a, b| a.0.invoke.time_ms.total_cmp(&b.0.invoke.time_ms));
    let mut anomalies = Vec::new();
    let (mut j, mut max_before, mut max_event) = (0, 0u64, 0usize);
    for (op, rev) in &invoked {
        while j < done.len() && done[j].0 < op.invoke.time_ms {
            if done[j].1 > max_before {
                max_before = done[j].1;
                max_event = done[j].2;
            }
            j += 1;
        }
        if *rev < max_before && anomalies.len() < 20 {
            anomalies.push(json!({"op_index": op.invoke.index, "revision": rev, "earlier_completed_revision": max_before, "earlier_event": max_event}));
        }
    }
    let valid = if anomalies.is_empty() {
        Validity::True
    } else {
        Validity::False
    };
    Verdict {
        valid,
        ops: invoked.len(),
        details: json!({"anomalies": anomalies}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(f: RegF, call: f64, ret: Option<f64>) -> RegOp {
        RegOp {
            f,
            index: 0,
            call,
            ret,
        }
    }

    #[test]
    fn linearizable_histories_pass() {
        // Concurrent write and read: the read may see either value.
        let h = vec![
            op(RegF::Write(1), 0.0, Some(10.0)),
            op(RegF::Write(2), 5.0, Some(20.0)),
            op(RegF::Read(Some(1)), 12.0, Some(25.0)),
        ];
        assert!(matches!(linearizable(&h, 1_000_000), Search::Linearizable));
        // A write of unknown outcome may have happened...
        let h = vec![
            op(RegF::Write(1), 0.0, None),
            op(RegF::Read(Some(1)), 50.0, Some(60.0)),
        ];
        assert!(matches!(linearizable(&h, 1_000_000), Search::Linearizable));
        // ...or not.
        let h = vec![
            op(RegF::Write(1), 0.0, None),
            op(RegF::Read(None), 50.0, Some(60.0)),
        ];
        assert!(matches!(linearizable(&h, 1_000_000), Search::Linearizable));
        let h = vec![
            op(RegF::Write(1), 0.0, Some(1.0)),
            op(RegF::Cas(1, 2), 2.0, Some(3.0)),
            op(RegF::Read(Some(2)), 4.0, Some(5.0)),
        ];
        assert!(matches!(linearizable(&h, 1_000_000), Search::Linearizable));
    }

    #[test]
    fn stale_reads_and_lost_writes_fail() {
        // A read after a completed write sees the older value: stale.
        let h = vec![
            op(RegF::Write(1), 0.0, Some(1.0)),
            op(RegF::Write(2), 2.0, Some(3.0)),
            op(RegF::Read(Some(1)), 4.0, Some(5.0)),
        ];
        match linearizable(&h, 1_000_000) {
            Search::Not { stuck, .. } => assert_eq!(stuck, 2, "the stale read is named"),
            _ => panic!("a stale read must be caught"),
        }
        // An acknowledged write that a later read does not see: lost.
        let h = vec![
            op(RegF::Write(7), 0.0, Some(1.0)),
            op(RegF::Read(None), 2.0, Some(3.0)),
        ];
        assert!(matches!(linearizable(&h, 1_000_000), Search::Not { .. }));
        // A cas that succeeded from a value the register never held.
        let h = vec![
            op(RegF::Write(1), 0.0, Some(1.0)),
            op(RegF::Cas(5, 6), 2.0, Some(3.0)),
        ];
        assert!(matches!(linearizable(&h, 1_000_000), Search::Not { .. }));
    }

    #[test]
    fn unseen_unknown_writes_are_left_out() {
        use crate::history::{Event, Op};
        let ev = |kind: Kind, f: &str, value: Value, t: f64| Event {
            index: 0,
            time_ms: t,
            process: 0,
            kind,
            f: f.into(),
            key: Some("k".into()),
            value,
            node: None,
            revision: None,
            error: None,
        };
        let op = |f: &str, v: Value, kind: Kind, out: Value, t: f64| Op {
            invoke: ev(Kind::Invoke, f, v, t),
            complete: Some(ev(kind, f, out, t + 1.0)),
        };
        let ops = [
            op("write", json!(1), Kind::Info, json!(1), 0.0),
            op("write", json!(2), Kind::Info, json!(2), 2.0),
            op("read", Value::Null, Kind::Ok, json!(2), 5.0),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        let regs = reg_ops(&refs);
        assert_eq!(
            regs.len(),
            2,
            "the unknown write of 1, never read, is left out; the one of 2 stays"
        );
        assert!(matches!(linearizable(&regs, 1000), Search::Linearizable));
    }

    #[test]
    fn exhausted_budget_is_unknown() {
        let h: Vec<RegOp> = (0..30)
            .map(|i| op(RegF::Write(i), 0.0, Some(100.0)))
            .chain([op(RegF::Read(Some(-1)), 200.0, Some(201.0))])
            .collect();
        assert!(matches!(linearizable(&h, 50), Search::OutOfBudget));
    }
}
