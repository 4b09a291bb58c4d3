//! Native only: a simulated SCADA directory (`tools/simulate_ltown.py` output) as the service's
//! input messages, one per 5-min step, the same shape `outpost-sim --scada` publishes.

use std::path::Path;

/// One step's time and message payload.
pub struct Step {
    pub time: String,
    pub payload: String,
}

/// Header columns and rows (timestamp, values) of a CSV file.
type Table = (Vec<String>, Vec<(String, Vec<String>)>);

fn read_csv(path: &Path) -> Result<Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().ok_or("empty csv")?.split(',').skip(1).map(str::to_owned).collect();
    let rows = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut it = l.split(',');
            let t = it.next().unwrap_or("").to_owned();
            (t, it.map(str::to_owned).collect())
        })
        .collect();
    Ok((header, rows))
}

/// Reads `pressures.csv`, `flows.csv`, `demands.csv`, `levels.csv` of `dir`, rows whose time
/// is in `[from, to]` (strings compare in time order), into messages.
pub fn load_dir(dir: &Path, from: Option<&str>, to: Option<&str>) -> Result<Vec<Step>, String> {
    let groups = [
        ("pressure_m", "pressures.csv"),
        ("flow_m3h", "flows.csv"),
        ("demand_lph", "demands.csv"),
        ("level_m", "levels.csv"),
    ];
    let mut tables = Vec::new();
    for (key, file) in groups {
        tables.push((key, read_csv(&dir.join(file))?));
    }
    let n = tables[0].1 .1.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let time = &tables[0].1 .1[i].0;
        if from.is_some_and(|f| time.as_str() < f) || to.is_some_and(|t| time.as_str() > t) {
            continue;
        }
        let mut s = format!("{{\"time\":\"{time}\"");
        for (key, (header, rows)) in &tables {
            let row = rows.get(i).ok_or_else(|| format!("{key}: fewer rows than pressures"))?;
            if row.0 != *time {
                return Err(format!("{key}: row {i} is {} not {time}", row.0));
            }
            s.push_str(&format!(",\"{key}\":{{"));
            for (k, (id, v)) in header.iter().zip(&row.1).enumerate() {
                if k > 0 {
                    s.push(',');
                }
                s.push_str(&format!("\"{id}\":{v}"));
            }
            s.push('}');
        }
        s.push('}');
        out.push(Step { time: time.clone(), payload: s });
    }
    Ok(out)
}
