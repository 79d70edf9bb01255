//! The run's timeline as one HTML page with an SVG: a row per client, each operation a bar from its
//! invocation to its completion (green ok, grey failed, orange unknown), faults as red bands.

use crate::history::{Event, Kind, NEMESIS, pair};

pub fn html(events: &[Event], clients: u64) -> String {
    let end = events.last().map_or(1.0, |e| e.time_ms).max(1.0);
    let width = 1400.0;
    let row = 14.0;
    let x = |t: f64| 10.0 + t / end * (width - 20.0);
    let rows = clients.max(1) + 1;
    let height = (rows as f64 + 2.0) * row + 40.0;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='monospace' font-size='10'>"
    );
    let mut open: Vec<&Event> = Vec::new();
    for e in events.iter().filter(|e| e.process == NEMESIS) {
        if e.kind == Kind::Invoke {
            open.push(e);
        } else if let Some(i) = open.iter().position(|s| s.f == e.f) {
            let s = open.remove(i);
            svg.push_str(&format!(
                "<rect x='{:.1}' y='20' width='{:.1}' height='{:.1}' fill='#f4433633'><title>{} {} ({:.0}–{:.0} ms)</title></rect><text x='{:.1}' y='14' fill='#b71c1c'>{}</text>",
                x(s.time_ms), (x(e.time_ms) - x(s.time_ms)).max(1.0), rows as f64 * row, s.f, e.value, s.time_ms, e.time_ms, x(s.time_ms), s.f
            ));
        }
    }
    for op in pair(events) {
        let c = op.complete.as_ref();
        let t1 = c.map_or(end, |c| c.time_ms);
        let color = match op.outcome() {
            Kind::Ok => "#43a047",
            Kind::Fail => "#9e9e9e",
            _ => "#fb8c00",
        };
        let lane = if op.invoke.process >= 1_000_000 {
            clients
        } else {
            (op.invoke.process as u64) % clients.max(1)
        };
        let y = 20.0 + lane as f64 * row;
        svg.push_str(&format!(
            "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='{color}'><title>p{} {} {} {} → {} {} (node {:?})</title></rect>",
            x(op.invoke.time_ms), y + 2.0, (x(t1) - x(op.invoke.time_ms)).max(1.0), row - 4.0,
            op.invoke.process, op.invoke.f, op.invoke.key.as_deref().unwrap_or(""), op.invoke.value,
            c.map_or("?".to_string(), |c| format!("{:?}", c.kind)), c.map_or(String::new(), |c| c.value.to_string()), op.invoke.node
        ));
    }
    svg.push_str(&format!("<text x='10' y='{:.1}'>0 ms</text><text x='{:.1}' y='{:.1}' text-anchor='end'>{end:.0} ms</text></svg>", height - 8.0, width - 10.0, height - 8.0));
    format!(
        "<!doctype html><meta charset='utf-8'><title>gw-jepsen timeline</title><h3>gw-jepsen timeline</h3><p>rows: clients (last: final reads); green ok, grey failed, orange unknown; red bands: faults (hover for details)</p>{svg}"
    )
}
