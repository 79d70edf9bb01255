//! The transaction workload (list-append, after Elle): lists held in ConfigMaps `jepsen-txn/list-N`
//! (`data.list`, comma-separated). A transaction reads the lists at one revision (a linearizable List),
//! then appends a unique value to one to three of them in one apply conditioned on the resourceVersions
//! it read: all or nothing. Its recorded reads are those lists (the conditions keep them unchanged until
//! the commit; the other lists it happened to see are not part of the transaction). The checker builds the dependency graph of the committed transactions
//! (write-write from the final list order, write-read and read-write from what each read saw, and
//! real-time order) and looks for cycles; it also checks that no committed append is lost or duplicated,
//! that every read is a prefix of the final list, and that no read sees half of a transaction.

use crate::checker::{Validity, Verdict};
use crate::history::{Event, Kind, Op, Recorder};
use crate::nemesis::Rng;
use gw_client::{Client, Error};
use gw_proto as pb;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const NS: &str = "jepsen-txn";
const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// Every list at one revision: name → (values, resourceVersion), and the revision.
pub async fn read_all(ch: &Channel) -> Result<(BTreeMap<String, (Vec<i64>, String)>, u64), Error> {
    let req = pb::ListRequest {
        group: String::new(),
        kind: "ConfigMap".into(),
        namespace: NS.into(),
        options: None,
        at_revision: 0,
        ..Default::default()
    };
    let r = Client::config(ch.clone()).list(req).await?.into_inner();
    let mut out = BTreeMap::new();
    for o in &r.objects_json {
        let v: Value = serde_json::from_str(o).unwrap_or_default();
        let list = v["data"]["list"]
            .as_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|x| x.parse().ok())
            .collect();
        out.insert(
            v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            (
                list,
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            ),
        );
    }
    Ok((out, r.revision))
}

/// One client of the transaction workload.
pub async fn client(
    ctx: std::sync::Arc<crate::register::Clients>,
    first_process: i64,
    seed: u64,
    lists: u64,
    next_value: std::sync::Arc<AtomicI64>,
) {
    let mut rng = Rng::new(seed);
    let mut process = first_process;
    while Instant::now() < ctx.until {
        let (node, ch) = &ctx.chans[rng.below(ctx.chans.len() as u64) as usize];
        let n = 1 + rng.below(3);
        let mut keys: Vec<String> = Vec::new();
        while keys.len() < n as usize {
            let k = format!("list-{}", rng.below(lists));
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let appends: Vec<(String, i64)> = keys
            .into_iter()
            .map(|k| (k, next_value.fetch_add(1, Ordering::Relaxed)))
            .collect();
        let mut inv = Recorder::event(
            process,
            Kind::Invoke,
            "txn",
            None,
            json!({"append": appends}),
        );
        inv.node = Some(*node);
        ctx.rec.record(inv);
        let op = async {
            let (read, rev) = read_all(ch).await.map_err(|e| (true, e))?;
            let mut docs = Vec::new();
            for (i, (k, v)) in appends.iter().enumerate() {
                let (mut list, rv) = read.get(k).cloned().unwrap_or_default();
                list.push(*v);
                let joined: Vec<String> = list.iter().map(|x| x.to_string()).collect();
                let mut doc = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": k, "namespace": NS}, "data": {"list": joined.join(",")}});
                // Create-only when the list did not exist (resourceVersion "0"), else at the version read.
                doc["metadata"]["resourceVersion"] =
                    json!(if rv.is_empty() { "0".to_string() } else { rv });
                docs.push(pb::Document {
                    json: doc.to_string(),
                    source: "jepsen-txn".into(),
                    index: i as u32 + 1,
                });
            }
            let req = pb::ApplyRequest {
                documents: docs,
                dry_run: false,
            };
            let w = Client::config(ch.clone()).apply(req).await.map_err(|s| {
                let e = Error::from(s);
                (e.is_definite(), e)
            })?;
            Ok::<_, (bool, Error)>((read, rev, w.into_inner().revision))
        };
        let (kind, value, revision, error) = match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok((read, _, wrev))) => {
                // Only the lists it appends to: those the apply's resourceVersion conditions protect
                // until the commit, so the transaction reads and writes at one point in time.
                let reads: BTreeMap<String, Vec<i64>> = read
                    .into_iter()
                    .filter(|(k, _)| appends.iter().any(|(a, _)| a == k))
                    .map(|(k, (l, _))| (k, l))
                    .collect();
                (
                    Kind::Ok,
                    json!({"append": appends, "read": reads}),
                    Some(wrev),
                    None,
                )
            }
            Ok(Err((true, s))) => (
                Kind::Fail,
                json!({"append": appends}),
                None,
                Some(s.to_string()),
            ),
            Ok(Err((false, s))) => (
                Kind::Info,
                json!({"append": appends}),
                None,
                Some(s.to_string()),
            ),
            Err(_) => (
                Kind::Info,
                json!({"append": appends}),
                None,
                Some("timeout".to_string()),
            ),
        };
        let mut done = Recorder::event(process, kind, "txn", None, value);
        done.node = Some(*node);
        done.revision = revision;
        done.error = error;
        ctx.rec.record(done);
        if kind == Kind::Info {
            process += ctx.stride;
        }
    }
}

fn appends_of(e: &Event) -> Vec<(String, i64)> {
    e.value["append"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_i64()?)))
        .collect()
}

fn reads_of(e: &Event) -> BTreeMap<String, Vec<i64>> {
    e.value["read"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_i64())
                    .collect(),
            )
        })
        .collect()
}

/// Checks the transactions against the final lists (read after healing).
pub fn check(ops: &[Op], finals: &BTreeMap<String, Vec<i64>>) -> Verdict {
    let txns: Vec<&Op> = ops.iter().filter(|o| o.invoke.f == "txn").collect();
    let ok: Vec<&Op> = txns
        .iter()
        .copied()
        .filter(|o| o.outcome() == Kind::Ok)
        .collect();
    let mut anomalies: Vec<Value> = Vec::new();
    let mut bad = |what: &str, detail: Value| {
        if anomalies.len() < 50 {
            anomalies.push(json!({"anomaly": what, "detail": detail}));
        }
    };
    // Who wrote each value; which values were attempted at all.
    let mut writer: HashMap<i64, usize> = HashMap::new();
    let mut attempted: HashSet<i64> = HashSet::new();
    for (i, o) in ok.iter().enumerate() {
        for (_, v) in appends_of(&o.invoke) {
            writer.insert(v, i);
        }
    }
    for o in txns.iter().filter(|o| o.outcome() != Kind::Fail) {
        attempted.extend(appends_of(&o.invoke).into_iter().map(|(_, v)| v));
    }
    // Final lists: no duplicates, nothing never attempted, every committed append present.
    let mut position: HashMap<(String, i64), usize> = HashMap::new();
    for (k, list) in finals {
        for (i, v) in list.iter().enumerate() {
            if position.insert((k.clone(), *v), i).is_some() {
                bad("duplicate-append", json!({"list": k, "value": v}));
            }
            if !attempted.contains(v) {
                bad("garbage-value", json!({"list": k, "value": v}));
            }
        }
    }
    for o in &ok {
        for (k, v) in appends_of(&o.invoke) {
            if !position.contains_key(&(k.clone(), v)) {
                bad(
                    "lost-append",
                    json!({"list": k, "value": v, "txn": o.invoke.index}),
                );
            }
        }
    }
    // Reads: prefixes of the final lists, never half of a transaction.
    for o in &ok {
        let reads = reads_of(o.complete.as_ref().expect("ok has a completion"));
        for (k, seen) in &reads {
            let fin = finals.get(k).map(Vec::as_slice).unwrap_or(&[]);
            if !fin.starts_with(seen) {
                bad(
                    "read-not-prefix-of-final",
                    json!({"list": k, "read": seen, "txn": o.invoke.index}),
                );
            }
        }
        for (k, seen) in &reads {
            for v in seen {
                if let Some(&w) = writer.get(v) {
                    for (k2, v2) in appends_of(&ok[w].invoke) {
                        if &k2 != k && reads.get(&k2).is_some_and(|l| !l.contains(&v2)) {
                            bad(
                                "fractured-read",
                                json!({"txn": o.invoke.index, "saw": [k, v], "missed": [k2, v2]}),
                            );
                        }
                    }
                }
            }
        }
    }
    // The dependency graph over committed transactions.
    let n = ok.len();
    let mut edges: Vec<HashSet<usize>> = vec![HashSet::new(); n];
    for (k, list) in finals {
        let _ = k;
        let ws: Vec<usize> = list.iter().filter_map(|v| writer.get(v).copied()).collect();
        for w in ws.windows(2) {
            if w[0] != w[1] {
                edges[w[0]].insert(w[1]); // ww
            }
        }
    }
    for (j, o) in ok.iter().enumerate() {
        let reads = reads_of(o.complete.as_ref().expect("ok has a completion"));
        for (k, seen) in &reads {
            if let Some(last) = seen.last()
                && let Some(&w) = writer.get(last)
                && w != j
            {
                edges[w].insert(j); // wr
            }
            // rw: the next committed append to this list after what j saw.
            let fin = finals.get(k).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(next) = fin.get(seen.len())
                && let Some(&w) = writer.get(next)
                && w != j
            {
                edges[j].insert(w);
            }
        }
    }
    // Real time: completed before invoked (sorted sweep, linking each to the latest completed before it).
    let mut by_end: Vec<(f64, usize)> = ok
        .iter()
        .enumerate()
        .map(|(i, o)| (o.complete.as_ref().map_or(f64::MAX, |c| c.time_ms), i))
        .collect();
    by_end.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (j, o) in ok.iter().enumerate() {
        let start = o.invoke.time_ms;
        let before: Vec<usize> = by_end
            .iter()
            .take_while(|(t, _)| *t < start)
            .map(|(_, i)| *i)
            .collect();
        if let Some(&last) = before.last() {
            edges[last].insert(j);
        }
    }
    let cycles = cycles(&edges);
    for c in cycles.iter().take(5) {
        bad(
            "dependency-cycle",
            json!({"txns": c.iter().map(|i| ok[*i].invoke.index).collect::<Vec<_>>()}),
        );
    }
    let valid = if anomalies.is_empty() && !ok.is_empty() {
        Validity::True
    } else {
        Validity::False
    };
    Verdict {
        valid,
        ops: txns.len(),
        details: json!({"committed": ok.len(), "lists": finals.len(), "anomalies": anomalies}),
    }
}

/// The strongly connected components with more than one transaction (Tarjan, iterative).
fn cycles(edges: &[HashSet<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let (mut index, mut low, mut on) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut out, mut next) = (Vec::new(), Vec::new(), 0);
    let adj: Vec<Vec<usize>> = edges.iter().map(|s| s.iter().copied().collect()).collect();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        // (vertex, next edge to look at, whether the previous edge descended into a new vertex).
        let mut call: Vec<(usize, usize, bool)> = vec![(root, 0, false)];
        while let Some((v, i, descended)) = call.pop() {
            if i == 0 {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on[v] = true;
            } else if descended {
                // Back from a tree child: its low-link counts (a finished component's does not).
                let w = adj[v][i - 1];
                low[v] = low[v].min(low[w]);
            }
            if let Some(&w) = adj[v].get(i) {
                if index[w] == usize::MAX {
                    call.push((v, i + 1, true));
                    call.push((w, 0, false));
                } else {
                    if on[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    call.push((v, i + 1, false));
                }
                continue;
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    out.push(comp);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(index: usize, t0: f64, t1: f64, append: Value, read: Value) -> Op {
        let mut inv = Recorder::event(0, Kind::Invoke, "txn", None, json!({"append": append}));
        inv.index = index;
        inv.time_ms = t0;
        let mut done = Recorder::event(
            0,
            Kind::Ok,
            "txn",
            None,
            json!({"append": append, "read": read}),
        );
        done.time_ms = t1;
        Op {
            invoke: inv,
            complete: Some(done),
        }
    }

    #[test]
    fn components() {
        // 0 → 1 → 2 → 0 is a cycle; 3 → 0 and 2 → 4 are not part of it.
        let edges: Vec<HashSet<usize>> = vec![
            [1].into(),
            [2].into(),
            [0, 4].into(),
            [0].into(),
            HashSet::new(),
        ];
        let mut c = cycles(&edges);
        assert_eq!(c.len(), 1);
        c[0].sort();
        assert_eq!(c[0], vec![0, 1, 2]);
        // A finished component reached by a cross edge does not pull its visitor in.
        let edges: Vec<HashSet<usize>> = vec![[1].into(), [0].into(), [0].into()];
        let c = cycles(&edges);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(!c[0].contains(&2));
        assert!(cycles(&[[1].into(), [2].into(), HashSet::new()]).is_empty());
    }

    #[test]
    fn serial_history_is_valid_and_anomalies_are_named() {
        let ops = vec![
            txn(0, 0.0, 1.0, json!([["list-0", 1]]), json!({})),
            txn(
                1,
                2.0,
                3.0,
                json!([["list-0", 2], ["list-1", 3]]),
                json!({"list-0": [1]}),
            ),
            txn(
                2,
                4.0,
                5.0,
                json!([["list-1", 4]]),
                json!({"list-0": [1, 2], "list-1": [3]}),
            ),
        ];
        let finals: BTreeMap<String, Vec<i64>> = [
            ("list-0".to_string(), vec![1, 2]),
            ("list-1".to_string(), vec![3, 4]),
        ]
        .into();
        assert_eq!(check(&ops, &finals).valid, Validity::True);
        // A lost append.
        let lost: BTreeMap<String, Vec<i64>> = [
            ("list-0".to_string(), vec![1, 2]),
            ("list-1".to_string(), vec![3]),
        ]
        .into();
        assert_eq!(
            check(&ops, &lost).details["anomalies"][0]["anomaly"],
            "lost-append"
        );
        // Half of txn 1 seen.
        let mut fractured = ops.clone();
        fractured[2] = txn(
            2,
            4.0,
            5.0,
            json!([["list-1", 4]]),
            json!({"list-0": [1, 2], "list-1": []}),
        );
        let v = check(&fractured, &finals);
        assert!(
            v.details["anomalies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["anomaly"] == "fractured-read"),
            "{v:?}"
        );
        // A read that misses a write completed before it started: a real-time cycle.
        let mut stale = ops.clone();
        stale[2] = txn(
            2,
            4.0,
            5.0,
            json!([["list-1", 4]]),
            json!({"list-0": [1], "list-1": [3]}),
        );
        let v = check(&stale, &finals);
        assert!(
            v.details["anomalies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["anomaly"] == "dependency-cycle"),
            "{v:?}"
        );
    }
}
