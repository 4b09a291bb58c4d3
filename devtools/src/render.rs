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
    let num =
        |k: &str, prec: usize| v.get(k).and_then(|x| x.as_f64()).map_or("-".to_string(), |x| format!("{x:.prec$}"));
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
        _ => render_line(topic, payload),
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
