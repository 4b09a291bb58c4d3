//! How outputs are printed for people: `render_line` (one JSON line,
//! `outpostctl run` and `watch`) and `pretty_line` (a readable line per
//! output of the shipped services, `watch --pretty`).

use base64::Engine as _;

/// Payload as JSON when it parses, else as a base64 string.
pub fn render_line(topic: &str, payload: &[u8]) -> String {
    let value = match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => v,
        Err(_) => serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
    };
    serde_json::json!({"topic": topic, "payload": value}).to_string()
}

/// One line for the outputs of the shipped services, by topic; anything
/// else as `topic payload`.
pub fn pretty_line(topic: &str, payload: &[u8]) -> String {
    let subject = outpost::topic::segment(topic, 2).unwrap_or("?");
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return format!("{subject:>10}  (not JSON: {} bytes)", payload.len());
    };
    let num = |k: &str, prec: usize| number(&v, k, prec);
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_owned();
    match topic.rsplit('/').next() {
        Some("fix") => fix_line(subject, &v, &num),
        Some("warning") => format!(
            "{subject:>10}  {:<8} {:<8} {:<9} with {:<10} distance {:>7} m  closing {:>6} m/s  TTC {:>6} s  ({})",
            text("state"),
            text("severity"),
            text("kind"),
            text("other"),
            num("distance_m", 1),
            num("closing_speed_mps", 1),
            num("ttc_s", 1),
            text("time"),
        ),
        Some("zone") => format!(
            "{subject:>10}  {:<8} zone {} ({})  speed {} m/s  ({})",
            text("state"),
            text("zone"),
            text("zone_kind"),
            num("speed_mps", 1),
            text("time")
        ),
        Some("cycle") => format!(
            "{subject:>10}  cycle {}  loader {:<6} payload {:>6} t  target {:>6} t  {:<8} queue {:>5} s",
            text("full_time"),
            text("loader"),
            num("payload_t", 1),
            num("target_t", 1),
            text("class"),
            v.pointer("/durations/queue_s").and_then(|x| x.as_f64()).map_or("-".into(), |x| format!("{x:.0}")),
        ),
        Some("advice") => format!("{subject:>10}  advice: {}", text("message")),
        Some("alarm") => format!(
            "{subject:>10}  leak {:<7} {:<10} pipe {:<6} {:>7} m3/h  confidence {:>4}  ({})",
            text("event"),
            text("leak_id"),
            text("pipe"),
            num("flow_m3h", 1),
            num("confidence", 2),
            text("time"),
        ),
        Some("shift") if subject == "site" => site_shift_table(&v),
        Some("shift") => format!(
            "{subject:>10}  shift {:<6} {:>4} cycles {:>9} t  mean {:>6} t  {:>7} t/h  over {:>3}  under {:>3}  queue {:>5} s  rejected {}",
            text("shift"),
            num("cycles", 0),
            num("tonnes", 1),
            num("mean_payload_t", 1),
            num("tonnes_per_hour", 0),
            num("over", 0),
            num("under", 0),
            num("queue_s_mean", 0),
            num("rejected_total", 0),
        ),
        _ => render_line(topic, payload),
    }
}

/// A number field with `prec` decimals, `-` when absent or not a number.
fn number(v: &serde_json::Value, k: &str, prec: usize) -> String {
    v.get(k).and_then(|x| x.as_f64()).map_or("-".to_string(), |x| format!("{x:.prec$}"))
}

/// The weight-loading site report of one shift as the site manager reads
/// it: a summary line, then one row per truck and per loader.
fn site_shift_table(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &serde_json::Value, k: &str| match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "site {} shift {}: {} cycles, {} t, {} t/h, mean payload {} t (ratio {}), overload {} %, underload {} %, queue {} s, {} trucks working, {} rejected",
        text(v, "site"),
        text(v, "shift"),
        number(v, "cycles", 0),
        number(v, "tonnes", 1),
        number(v, "tonnes_per_hour", 0),
        number(v, "mean_payload_t", 1),
        number(v, "payload_ratio", 3),
        v.get("overload_share").and_then(|x| x.as_f64()).map_or("-".into(), |x| format!("{:.1}", x * 100.0)),
        v.get("underload_share").and_then(|x| x.as_f64()).map_or("-".into(), |x| format!("{:.1}", x * 100.0)),
        number(v, "queue_s_mean", 0),
        number(v, "trucks_working", 0),
        number(v, "rejected_total", 0),
    );
    if let Some(only) = v.get("trucks_rejected_only").and_then(|x| x.as_array()).filter(|a| !a.is_empty()) {
        let names: Vec<String> = only.iter().map(|t| t.as_str().map_or_else(|| t.to_string(), str::to_owned)).collect();
        let _ = writeln!(out, "  every cycle rejected (check scale or feed): {}", names.join(", "));
    }
    // (title, key, decimals; None: text), first column left-aligned.
    const TRUCKS: &[(&str, &str, Option<usize>)] = &[
        ("truck", "truck", None),
        ("cycles", "cycles", Some(0)),
        ("tonnes", "tonnes", Some(1)),
        ("mean t", "mean_payload_t", Some(1)),
        ("t/h", "tonnes_per_hour", Some(0)),
        ("over", "overload", Some(0)),
        ("under", "under", Some(0)),
        ("queue s", "queue_s_mean", Some(0)),
        ("litres", "litres", Some(0)),
        ("rejected", "rejected_total", Some(0)),
    ];
    const LOADERS: &[(&str, &str, Option<usize>)] = &[
        ("loader", "loader", None),
        ("cycles", "cycles", Some(0)),
        ("tonnes", "tonnes", Some(1)),
        ("mean t", "mean_payload_t", Some(1)),
        ("deviation", "mean_deviation_t", Some(1)),
        ("over", "overload", Some(0)),
        ("under", "under", Some(0)),
        ("queue s", "queue_s_mean", Some(0)),
        ("loading s", "loading_s_mean", Some(0)),
    ];
    for (key, columns) in [("per_truck", TRUCKS), ("per_loader", LOADERS)] {
        let Some(rows) = v.get(key).and_then(|x| x.as_array()) else { continue };
        let cell = |r: &serde_json::Value, k: &str, prec: Option<usize>| match prec {
            Some(p) => number(r, k, p),
            None => text(r, k),
        };
        let line = |cells: Vec<String>| {
            let mut l = String::from(" ");
            for (i, c) in cells.iter().enumerate() {
                let width = columns[i].0.len().max(if i == 0 { 8 } else { 6 });
                let _ = if i == 0 { write!(l, " {c:<width$}") } else { write!(l, " {c:>width$}") };
            }
            l
        };
        let _ = writeln!(out, "{}", line(columns.iter().map(|c| c.0.to_owned()).collect()));
        for r in rows {
            let _ = writeln!(out, "{}", line(columns.iter().map(|&(_, k, p)| cell(r, k, p)).collect()));
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_shift_report_reads_as_a_table() {
        let report = serde_json::json!({
            "site": "s1", "shift": "21", "cycles": 3, "tonnes": 900.25, "tonnes_per_hour": 450.4,
            "mean_payload_t": 300.1, "payload_ratio": 1.02, "overload_share": 0.25, "underload_share": 0.0,
            "queue_s_mean": 61.6, "trucks_working": 2, "rejected_total": 1, "trucks_rejected_only": ["CDH69"],
            "per_truck": [
                {"truck": "CDH90", "cycles": 2, "tonnes": 600.0, "mean_payload_t": 300.0, "tonnes_per_hour": 300.0,
                 "overload": 1, "under": 0, "queue_s_mean": 50.0, "litres": 1200.0, "rejected_total": 0},
                {"truck": "CDH91", "cycles": 1, "tonnes": 300.25, "mean_payload_t": 300.25, "tonnes_per_hour": 150.4,
                 "overload": 0, "under": 0, "queue_s_mean": null, "litres": 0.0, "rejected_total": 1}
            ],
            "per_loader": [{"loader": "EX5", "cycles": 3, "tonnes": 900.25, "mean_payload_t": 300.1,
                            "mean_deviation_t": 5.2, "overload": 1, "under": 0, "queue_s_mean": 61.6, "loading_s_mean": 140.0}]
        });
        let text = pretty_line("svc/weight-loading/site/s1/shift", report.to_string().as_bytes());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(lines[0].starts_with("site s1 shift 21: 3 cycles, 900.2 t, 450 t/h"), "{text}");
        assert!(lines[0].contains("overload 25.0 %"), "{text}");
        assert_eq!(lines[1], "  every cycle rejected (check scale or feed): CDH69");
        let row: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(row, ["CDH90", "2", "600.0", "300.0", "300", "1", "0", "50", "1200", "0"]);
        assert!(lines[4].contains("CDH91") && lines[4].contains(" - "), "a missing queue shows as '-': {text}");
        assert!(lines[6].trim_start().starts_with("EX5"), "{text}");
        // A truck's running report stays one line.
        let truck = serde_json::json!({"shift": "21", "cycles": 2, "tonnes": 600.0});
        assert_eq!(pretty_line("svc/weight-loading/CDH90/shift", truck.to_string().as_bytes()).lines().count(), 1);
    }
}

/// `asset  time  lat lon  alt  speed track  mode` for a gpsd-style TPV.
fn fix_line(asset: &str, v: &serde_json::Value, num: &dyn Fn(&str, usize) -> String) -> String {
    format!(
        "{asset:>10}  {:<24}  mode {}  lat {:>13} lon {:>14}  alt {:>8} m  speed {:>6} m/s  track {:>6}",
        v.get("time").and_then(|t| t.as_str()).unwrap_or("(no time)"),
        v.get("mode").and_then(|m| m.as_i64()).unwrap_or(0),
        num("lat", 7),
        num("lon", 7),
        num("alt", 1),
        num("speed", 2),
        num("track", 1),
    )
}
