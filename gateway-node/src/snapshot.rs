//! The committed objects at one revision: what the watch publishes, the compiler reads and the node
//! persists for static stability.

use gw_model::ObjectKey;
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map::Iter;
use std::iter::Peekable;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T = Value> {
    pub revision: u64,
    pub objects: BTreeMap<ObjectKey, Arc<T>>,
}

impl<T> Default for Snapshot<T> {
    fn default() -> Self {
        Snapshot {
            revision: 0,
            objects: BTreeMap::new(),
        }
    }
}

/// What a watch keeps of each stored object it is sent: the config keeps the JSON object; the
/// session affinity table only its entries (a million of them: 2.0 KB of node RSS each, against 4.8
/// as JSON objects, `bench/results/sessions-node-view-20261207.md`).
pub trait Stored: Clone + Send + Sync + 'static {
    /// `None`: not an object of this kind (it is not kept).
    fn from_json(v: Value) -> Option<Self>;
}

impl Stored for Value {
    fn from_json(v: Value) -> Option<Value> {
        Some(v)
    }
}

impl Stored for gw_model::affinity::SessionEntry {
    fn from_json(v: Value) -> Option<Self> {
        gw_model::affinity::SessionEntry::from_object(&v)
    }
}

impl Snapshot {
    /// The objects that differ from `before`'s: each key put or changed with its object, each key
    /// deleted with `None`. An object the watch did not touch keeps its `Arc` from one snapshot to the
    /// next, so walking both in key order and comparing pointers finds the changes without looking
    /// into any object.
    pub fn changes<'a>(&'a self, before: &'a Snapshot) -> Changes<'a> {
        Changes {
            now: self.objects.iter().peekable(),
            before: before.objects.iter().peekable(),
        }
    }
}

/// See `Snapshot::changes`.
pub struct Changes<'a> {
    now: Peekable<Iter<'a, ObjectKey, Arc<Value>>>,
    before: Peekable<Iter<'a, ObjectKey, Arc<Value>>>,
}

impl<'a> Iterator for Changes<'a> {
    type Item = (&'a ObjectKey, Option<&'a Arc<Value>>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.now.peek(), self.before.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                // The same object: the same key (an `Arc` lives under one key only).
                (Some((_, a)), Some((_, b))) if Arc::ptr_eq(a, b) => {
                    self.now.next();
                    self.before.next();
                    continue;
                }
                (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
            };
            return match order {
                Ordering::Less => self.now.next().map(|(k, o)| (k, Some(o))),
                Ordering::Greater => self.before.next().map(|(k, _)| (k, None)),
                Ordering::Equal => {
                    self.before.next();
                    self.now.next().map(|(k, o)| (k, Some(o)))
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_are_the_puts_and_deletes_between_two_snapshots() {
        let key = |n: &str| ObjectKey::new("", "ConfigMap", "ns", n);
        let mut before = Snapshot::default();
        for n in ["a", "b", "c", "d"] {
            before.objects.insert(key(n), Arc::new(json!({"n": n})));
        }
        let mut now = before.clone();
        now.objects.remove(&key("b"));
        now.objects.insert(key("c"), Arc::new(json!({"n": "c2"})));
        now.objects.insert(key("e"), Arc::new(json!({"n": "e"})));
        // Equal content in a new `Arc` is a change too (a put that changed nothing is rare, and
        // harmless to look at again).
        now.objects.insert(key("d"), Arc::new(json!({"n": "d"})));
        let got: Vec<(String, Option<Value>)> = now
            .changes(&before)
            .map(|(k, o)| (k.name.clone(), o.map(|o| (**o).clone())))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b".into(), None),
                ("c".into(), Some(json!({"n": "c2"}))),
                ("d".into(), Some(json!({"n": "d"}))),
                ("e".into(), Some(json!({"n": "e"}))),
            ]
        );
        assert_eq!(now.changes(&now).count(), 0);
        assert_eq!(now.changes(&Snapshot::default()).count(), 4);
    }
}
