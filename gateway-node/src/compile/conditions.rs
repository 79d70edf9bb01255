//! Status conditions (metav1.Condition) with the Gateway API's types and reasons, keeping
//! `lastTransitionTime` when a condition's status does not change.

use gw_model::meta::rfc3339;
use serde_json::{Value, json};

/// One condition to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub kind: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn ok(kind: &'static str, reason: &str, message: &str) -> Cond {
        Cond {
            kind,
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn fail(kind: &'static str, reason: &str, message: impl Into<String>) -> Cond {
        Cond {
            kind,
            status: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// A JSON object of `fields`, each value moved in (the `json!` macro would copy a `Value` through
/// serde: a route's whole status, once per compilation).
pub fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// Renders conditions; a condition whose status is unchanged from `previous` keeps its transition time.
pub fn render(conds: &[Cond], previous: &Value, generation: i64, now_ms: u64) -> Value {
    let prev = previous.as_array();
    let items: Vec<Value> = conds
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let kept = prev
                .and_then(|p| {
                    p.iter()
                        .find(|x| x["type"] == c.kind && x["status"] == status)
                })
                .and_then(|x| x["lastTransitionTime"].as_str().map(str::to_string));
            json!({
                "type": c.kind,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation,
                "lastTransitionTime": kept.unwrap_or_else(|| rfc3339(now_ms)),
            })
        })
        .collect();
    Value::Array(items)
}

/// A policy's `status.ancestors` being rebuilt by one controller: the other controllers' entries
/// kept, this controller's added one by one (each keeping its conditions' transition times).
pub struct Ancestors<'a> {
    previous: &'a Value,
    controller: &'a str,
    pub entries: Vec<Value>,
}

impl<'a> Ancestors<'a> {
    pub fn new(previous: &'a Value, controller: &'a str) -> Ancestors<'a> {
        let entries = previous["ancestors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["controllerName"] != controller)
            .cloned()
            .collect();
        Ancestors {
            previous,
            controller,
            entries,
        }
    }

    pub fn push(&mut self, ancestor_ref: Value, conds: &[Cond], generation: i64, now_ms: u64) {
        let previous = self.previous["ancestors"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["controllerName"] == self.controller && a["ancestorRef"] == ancestor_ref)
            .map(|a| a["conditions"].clone())
            .unwrap_or(Value::Null);
        self.entries.push(object([
            ("ancestorRef", ancestor_ref),
            ("controllerName", self.controller.into()),
            ("conditions", render(conds, &previous, generation, now_ms)),
        ]));
    }

    /// The status: `{"ancestors": [...]}`.
    pub fn status(self) -> Value {
        object([("ancestors", Value::Array(self.entries))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_transition_time_while_status_holds() {
        let prev = json!([{"type": "Accepted", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]);
        let out = render(&[Cond::ok("Accepted", "Accepted", "")], &prev, 3, 1_000_000);
        assert_eq!(out[0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(out[0]["observedGeneration"], 3);
        let out = render(&[Cond::fail("Accepted", "Nope", "x")], &prev, 3, 1_000_000);
        assert_eq!(out[0]["lastTransitionTime"], "1970-01-01T00:16:40Z");
        assert_eq!(out[0]["status"], "False");
    }
}
