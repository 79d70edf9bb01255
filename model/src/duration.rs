//! GEP-2257 durations: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`, a strict subset of Go's `time.ParseDuration`.

use std::time::Duration;

/// Parses a Gateway API duration string. Returns `None` when it does not follow GEP-2257.
pub fn parse(s: &str) -> Option<Duration> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut groups = 0;
    let mut total = Duration::ZERO;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = s[start..i].parse().ok()?;
        let unit = if s[i..].starts_with("ms") {
            i += 2;
            Duration::from_millis(1)
        } else {
            let u = match bytes.get(i)? {
                b'h' => Duration::from_secs(3600),
                b'm' => Duration::from_secs(60),
                b's' => Duration::from_secs(1),
                _ => return None,
            };
            i += 1;
            u
        };
        total += unit * u32::try_from(n).ok()?;
        groups += 1;
        if groups > 4 {
            return None;
        }
    }
    (groups > 0).then_some(total)
}

/// Formats a duration the way GEP-2257 canonicalises it (`1h2m3s`, `500ms`, `0s`).
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, name) in [(3_600_000u128, "h"), (60_000, "m"), (1000, "s"), (1, "ms")] {
        if ms >= unit {
            out.push_str(&format!("{}{name}", ms / unit));
            ms %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_gep_2257_forms() {
        let cases = [
            ("0s", 0),
            ("1h", 3_600_000),
            ("10ms", 10),
            ("1h30m", 5_400_000),
            ("1m1s1ms", 61_001),
            ("99999ms", 99_999),
            ("1h1m1s1ms", 3_661_001),
        ];
        for (s, ms) in cases {
            assert_eq!(parse(s), Some(Duration::from_millis(ms)), "{s}");
        }
    }

    #[test]
    fn rejects_what_the_crd_pattern_rejects() {
        for s in [
            "",
            "1",
            "1.5s",
            "100000s",
            "1d",
            "-1s",
            "1h1m1s1ms1h",
            "s",
            "1us",
            "1 s",
        ] {
            assert_eq!(parse(s), None, "{s}");
        }
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format(Duration::from_millis(5_400_000)), "1h30m");
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
