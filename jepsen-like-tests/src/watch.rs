//! The watch workload: one collector per member, watching the register objects; on any error or
//! silence it reconnects to the next member and resumes after the last revision it received. Its
//! checker holds each collector to the six watch guarantees against a reference stream read at the end
//! from a healthy cluster.

use crate::checker::{Validity, Verdict};
use gw_proto as pb;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Silence longer than this (no event, no bookmark) ends a connection.
pub const SILENCE: Duration = Duration::from_secs(3);

/// One revision's events as a collector received them: key → value (None: deleted).
pub type RevEvents = BTreeMap<String, Option<String>>;

#[derive(Debug, Default, Clone)]
pub struct Collected {
    /// In arrival order.
    pub revisions: Vec<(u64, RevEvents)>,
    /// (revision of the bookmark, last event revision before it).
    pub bookmarks: Vec<(u64, u64)>,
    /// Revisions at which the server said "compacted" and sent a snapshot instead of events.
    pub resets: Vec<u64>,
    pub reconnects: usize,
    pub members_used: BTreeSet<u64>,
}

fn request(after: u64) -> pb::WatchRequest {
    pb::WatchRequest {
        after_revision: Some(after),
        kinds: vec![gw_client::kind_ref("", "ConfigMap")],
        namespace: "jepsen".into(),
        bookmark_interval_ms: 500,
        show_secret_values: false,
    }
}

fn events_of(r: &pb::RevisionEvents) -> RevEvents {
    r.events
        .iter()
        .map(|e| {
            let name = e.target.as_ref().map_or(String::new(), |t| t.name.clone());
            let obj: Value = serde_json::from_str(&e.object_json).unwrap_or_default();
            let v = (e.r#type != pb::EventType::Delete as i32)
                .then(|| obj["data"]["value"].as_str().unwrap_or("").to_string());
            (name, v)
        })
        .collect()
}

/// Collects until `deadline`, or until it has received `stop_at` (once set, non-zero).
pub async fn collector(
    chans: Arc<Vec<(u64, Channel)>>,
    start: usize,
    stop_at: Arc<AtomicU64>,
    deadline: Instant,
) -> Collected {
    let mut out = Collected::default();
    let mut last = 0u64;
    let mut member = start;
    while Instant::now() < deadline {
        let target = stop_at.load(Ordering::Relaxed);
        if target != 0 && last >= target {
            break;
        }
        let (id, ch) = &chans[member % chans.len()];
        out.members_used.insert(*id);
        if let Ok(Ok(resp)) = tokio::time::timeout(
            SILENCE,
            gw_client::Client::config(ch.clone()).watch(request(last)),
        )
        .await
        {
            let mut stream = resp.into_inner();
            loop {
                let target = stop_at.load(Ordering::Relaxed);
                if (target != 0 && last >= target) || Instant::now() >= deadline {
                    return out;
                }
                let msg = match tokio::time::timeout(SILENCE, stream.next()).await {
                    Ok(Some(Ok(m))) => m,
                    _ => break,
                };
                match msg.body {
                    Some(pb::watch_response::Body::Events(r)) => {
                        last = last.max(r.revision);
                        out.revisions.push((r.revision, events_of(&r)));
                    }
                    Some(pb::watch_response::Body::Bookmark(b)) => {
                        out.bookmarks.push((b.revision, last));
                        last = last.max(b.revision);
                    }
                    Some(pb::watch_response::Body::Snapshot(s)) if s.done => {
                        out.resets.push(s.revision);
                        last = s.revision;
                    }
                    _ => {}
                }
            }
        }
        out.reconnects += 1;
        member += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// The reference: every revision that changed a watched object, from a watch from the beginning.
pub async fn reference(ch: &Channel, upto: u64) -> Result<BTreeMap<u64, RevEvents>, String> {
    let mut out = BTreeMap::new();
    let mut stream = gw_client::Client::config(ch.clone())
        .watch(request(0))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut last = 0;
    // Bookmarks keep a stream alive that may never reach `upto` (a member that lost what it had
    // acknowledged): the whole read has a deadline too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while last < upto {
        let next = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(10)),
            stream.next(),
        );
        match next.await {
            Ok(Some(Ok(m))) => match m.body {
                Some(pb::watch_response::Body::Events(r)) => {
                    last = r.revision;
                    out.insert(r.revision, events_of(&r));
                }
                Some(pb::watch_response::Body::Bookmark(b)) => last = last.max(b.revision),
                Some(pb::watch_response::Body::Snapshot(_)) => {
                    return Err(
                        "the reference watch was compacted: raise --history-revisions".into(),
                    );
                }
                None => {}
            },
            other => {
                return Err(format!(
                    "the reference watch ended before revision {upto}: {other:?}"
                ));
            }
        }
    }
    Ok(out)
}

/// The six guarantees, per collector: ordered, unique, committed and atomic (each received revision
/// is exactly the reference's), reliable (no reference revision missing between the first and last
/// received, except across an announced compaction), resumed (after reconnects, to other members),
/// bookmarks never behind the events already delivered.
pub fn check(collected: &[Collected], reference: &BTreeMap<u64, RevEvents>) -> Verdict {
    let mut anomalies = Vec::new();
    let mut events = 0;
    let mut per = Vec::new();
    for (i, c) in collected.iter().enumerate() {
        let mut bad = |what: &str, detail: Value| {
            if anomalies.len() < 50 {
                anomalies.push(json!({"collector": i, "guarantee": what, "detail": detail}));
            }
        };
        let mut prev = 0;
        for (rev, evs) in &c.revisions {
            events += evs.len();
            if *rev <= prev {
                bad(
                    if *rev == prev { "unique" } else { "ordered" },
                    json!({"revision": rev, "after": prev}),
                );
            }
            prev = prev.max(*rev);
            match reference.get(rev) {
                None => bad(
                    "committed",
                    json!({"revision": rev, "received": evs, "reference": null}),
                ),
                Some(r) if r != evs => bad(
                    "atomic",
                    json!({"revision": rev, "received": evs, "reference": r}),
                ),
                _ => {}
            }
        }
        if let (Some(first), Some(last)) = (c.revisions.first(), c.revisions.last()) {
            let got: BTreeSet<u64> = c.revisions.iter().map(|(r, _)| *r).collect();
            for r in reference.range(first.0..=last.0).map(|(r, _)| *r) {
                let announced = c.resets.iter().any(|x| *x >= r);
                if !got.contains(&r) && !announced {
                    bad("reliable", json!({"missing_revision": r}));
                }
            }
        }
        for (b, before) in &c.bookmarks {
            if b < before {
                bad("bookmark", json!({"bookmark": b, "after_event": before}));
            }
        }
        per.push(json!({"revisions": c.revisions.len(), "bookmarks": c.bookmarks.len(), "reconnects": c.reconnects,
                        "members_used": c.members_used, "compaction_resets": c.resets}));
    }
    let received_any = collected.iter().any(|c| !c.revisions.is_empty());
    let valid = if !anomalies.is_empty() || !received_any {
        Validity::False
    } else {
        Validity::True
    };
    Verdict {
        valid,
        ops: events,
        details: json!({"reference_revisions": reference.len(), "collectors": per, "anomalies": anomalies}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revs(pairs: &[(u64, &str, &str)]) -> Vec<(u64, RevEvents)> {
        pairs
            .iter()
            .map(|(r, k, v)| {
                (
                    *r,
                    [(k.to_string(), Some(v.to_string()))].into_iter().collect(),
                )
            })
            .collect()
    }

    #[test]
    fn watch_guarantees() {
        let reference: BTreeMap<u64, RevEvents> =
            revs(&[(2, "a", "1"), (3, "b", "2"), (5, "a", "3")])
                .into_iter()
                .collect();
        let good = Collected {
            revisions: revs(&[(2, "a", "1"), (3, "b", "2"), (5, "a", "3")]),
            bookmarks: vec![(6, 5)],
            ..Default::default()
        };
        assert_eq!(check(&[good], &reference).valid, Validity::True);
        let gap = Collected {
            revisions: revs(&[(2, "a", "1"), (5, "a", "3")]),
            ..Default::default()
        };
        let v = check(&[gap], &reference);
        assert_eq!(v.valid, Validity::False);
        assert_eq!(v.details["anomalies"][0]["guarantee"], "reliable");
        let dup = Collected {
            revisions: revs(&[(2, "a", "1"), (2, "a", "1"), (3, "b", "2")]),
            ..Default::default()
        };
        assert_eq!(
            check(&[dup], &reference).details["anomalies"][0]["guarantee"],
            "unique"
        );
        let torn = Collected {
            revisions: revs(&[(2, "a", "9")]),
            ..Default::default()
        };
        assert_eq!(
            check(&[torn], &reference).details["anomalies"][0]["guarantee"],
            "atomic"
        );
        let behind = Collected {
            revisions: revs(&[(5, "a", "3")]),
            bookmarks: vec![(4, 5)],
            ..Default::default()
        };
        assert_eq!(
            check(&[behind], &reference).details["anomalies"][0]["guarantee"],
            "bookmark"
        );
        // A gap announced by a compaction snapshot is not a loss.
        let compacted = Collected {
            revisions: revs(&[(2, "a", "1"), (5, "a", "3")]),
            resets: vec![4],
            ..Default::default()
        };
        assert_eq!(check(&[compacted], &reference).valid, Validity::True);
    }
}
