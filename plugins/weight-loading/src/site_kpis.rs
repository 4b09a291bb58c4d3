//! The site-wide KPIs, kept up to date by difference: each (truck, shift)
//! record's part is cached, and a call re-reads only the records it
//! touched (plus, for the shifts they belong to, one record per truck to
//! find the shift's span). A record therefore costs the same whatever the
//! number of kept shifts; [`SiteTotals::rebuild`] starts over (after init or
//! an eviction); [`full`] is the straightforward recomputation the tests
//! hold them to.

use crate::aggregate::TruckShift;
use std::collections::{BTreeMap, BTreeSet};

type Trucks = BTreeMap<String, BTreeMap<String, TruckShift>>;

/// Inputs of one truck's fuel share ([`fuel_share`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Fuel {
    litres: f64,
    tonnes: f64,
    weighed: u64,
    unweighed: u64,
}

impl Fuel {
    /// A record's inputs: none for a shift without cycle records.
    fn of(r: &TruckShift) -> Fuel {
        let junk = r.payload_junk();
        if r.cycles + junk == 0 {
            return Fuel::default();
        }
        Fuel { litres: r.litres, tonnes: r.tonnes, weighed: r.cycles, unweighed: junk }
    }

    fn add(&mut self, o: &Fuel, sign: f64) {
        self.litres += sign * o.litres;
        self.tonnes += sign * o.tonnes;
        if sign > 0.0 {
            self.weighed += o.weighed;
            self.unweighed += o.unweighed;
        } else {
            self.weighed -= o.weighed;
            self.unweighed -= o.unweighed;
        }
    }

    /// (litres, tonnes) charged; None without both.
    fn share(&self) -> Option<(f64, f64)> {
        (self.litres > 0.0 && self.tonnes > 0.0)
            .then(|| (self.litres * self.weighed as f64 / (self.weighed + self.unweighed) as f64, self.tonnes))
    }
}

/// A truck's refuelled litres charged to its weighed tonnes, as
/// (litres, tonnes): over shifts with cycle records, litres times the share
/// of its cycles whose payload is known (accepted / (accepted + rejected
/// for a zero, sentinel or implausible payload)), so a truck whose scale
/// fails is not charged the fuel of its unweighed cycles. None without both.
pub(crate) fn fuel_share<'a>(shifts: impl Iterator<Item = &'a TruckShift>) -> Option<(f64, f64)> {
    let mut fuel = Fuel::default();
    for r in shifts {
        fuel.add(&Fuel::of(r), 1.0);
    }
    fuel.share()
}

/// One record's part of the site totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Part {
    cycles: u64,
    tonnes: f64,
    ratio_sum: f64,
    under: u64,
    over: u64,
    queue_n: u64,
    queue_sum: f64,
    rejected_cycles: u64,
    fuel: Fuel,
}

impl Part {
    fn of(r: &TruckShift) -> Part {
        Part {
            cycles: r.cycles,
            tonnes: r.tonnes,
            ratio_sum: r.ratio_sum,
            under: r.class[0],
            over: r.class[3],
            queue_n: r.dur[0].n,
            queue_sum: r.dur[0].sum,
            rejected_cycles: r.rejected.iter().filter(|(k, _)| crate::is_cycle_reason(k)).map(|(_, n)| n).sum(),
            fuel: Fuel::of(r),
        }
    }

    fn add(&mut self, o: &Part, sign: f64) {
        let int = |a: &mut u64, b: u64| if sign > 0.0 { *a += b } else { *a -= b };
        int(&mut self.cycles, o.cycles);
        int(&mut self.under, o.under);
        int(&mut self.over, o.over);
        int(&mut self.queue_n, o.queue_n);
        int(&mut self.rejected_cycles, o.rejected_cycles);
        self.tonnes += sign * o.tonnes;
        self.ratio_sum += sign * o.ratio_sum;
        self.queue_sum += sign * o.queue_sum;
    }
}

/// The running totals behind the site KPIs.
#[derive(Debug, Default)]
pub struct SiteTotals {
    parts: BTreeMap<(String, String), Part>,
    sum: Part,
    /// Per truck: its fuel inputs over its shifts.
    truck_fuel: BTreeMap<String, Fuel>,
    fuel_litres: f64,
    fuel_tonnes: f64,
    /// Per shift: earliest start, latest end over its trucks, and its tonnes.
    spans: BTreeMap<String, (i64, i64, f64)>,
    hours: f64,
    span_tonnes: f64,
}

/// The site KPIs, by name.
pub type Kpis = Vec<(&'static str, f64)>;

impl SiteTotals {
    /// Totals of every record.
    pub fn rebuild(trucks: &Trucks, min_span_s: f64) -> SiteTotals {
        let mut t = SiteTotals::default();
        let pairs: BTreeSet<(String, String)> =
            trucks.iter().flat_map(|(tr, m)| m.keys().map(move |s| (tr.clone(), s.clone()))).collect();
        t.update(trucks, &pairs, min_span_s);
        t
    }

    /// Re-reads the records of `touched` (present or gone).
    pub fn update(&mut self, trucks: &Trucks, touched: &BTreeSet<(String, String)>, min_span_s: f64) {
        let mut shifts = BTreeSet::new();
        for (truck, shift) in touched {
            let key = (truck.clone(), shift.clone());
            let old = self.parts.remove(&key).unwrap_or_default();
            let new = trucks.get(truck).and_then(|m| m.get(shift)).map(Part::of);
            self.sum.add(&old, -1.0);
            let fuel = self.truck_fuel.entry(truck.clone()).or_default();
            let before = fuel.share();
            fuel.add(&old.fuel, -1.0);
            if let Some(p) = &new {
                self.sum.add(p, 1.0);
                fuel.add(&p.fuel, 1.0);
                self.parts.insert(key, *p);
            }
            let after = fuel.share();
            if let Some((l, t)) = before {
                self.fuel_litres -= l;
                self.fuel_tonnes -= t;
            }
            if let Some((l, t)) = after {
                self.fuel_litres += l;
                self.fuel_tonnes += t;
            }
            shifts.insert(shift.clone());
        }
        for shift in shifts {
            if let Some((a, b, tonnes)) = self.spans.remove(&shift) {
                let span = (b - a) as f64;
                if span >= min_span_s && span > 0.0 {
                    self.hours -= span / 3600.0;
                    self.span_tonnes -= tonnes;
                }
            }
            let mut span: Option<(i64, i64)> = None;
            let mut tonnes = 0.0;
            for r in trucks.values().filter_map(|m| m.get(&shift)) {
                tonnes += r.tonnes;
                if let (Some(a), Some(b)) = (r.first_start, r.last_end) {
                    span = Some(span.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
                }
            }
            if let Some((a, b)) = span {
                self.spans.insert(shift, (a, b, tonnes));
                let s = (b - a) as f64;
                if s >= min_span_s && s > 0.0 {
                    self.hours += s / 3600.0;
                    self.span_tonnes += tonnes;
                }
            }
        }
    }

    /// The site KPIs; `unattributed_cycles` are rejected cycles charged to no truck.
    pub fn kpis(&self, unattributed_cycles: u64) -> Kpis {
        let mut out = Vec::new();
        if self.hours > 0.0 {
            out.push(("tonnes_per_hour", self.span_tonnes / self.hours));
        }
        let s = &self.sum;
        if s.cycles > 0 {
            let n = s.cycles as f64;
            out.push(("payload_ratio", s.ratio_sum / n));
            out.push(("overload_share", s.over as f64 / n));
            out.push(("underload_share", s.under as f64 / n));
        }
        if s.queue_n > 0 {
            out.push(("loader_queue_s", s.queue_sum / s.queue_n as f64));
        }
        if self.fuel_tonnes > 0.0 {
            out.push(("fuel_per_tonne", self.fuel_litres / self.fuel_tonnes));
        }
        let rejected = s.rejected_cycles + unattributed_cycles;
        let records = s.cycles + rejected;
        if records > 0 {
            out.push(("rejected_share", rejected as f64 / records as f64));
        }
        out
    }
}

/// The site KPIs recomputed over every kept record, the straightforward
/// way (the oracle the running totals are tested against).
#[cfg(test)]
pub fn full(trucks: &Trucks, unattributed_cycles: u64, min_span_s: f64) -> Kpis {
    let (mut cycles, mut ratio_sum, mut under, mut over) = (0u64, 0.0, 0u64, 0u64);
    let mut queue = crate::aggregate::Stat::default();
    let mut spans: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let (mut fuel_l, mut fuel_t) = (0.0, 0.0);
    let mut rejected = unattributed_cycles;
    for shifts in trucks.values() {
        for (s, r) in shifts {
            cycles += r.cycles;
            ratio_sum += r.ratio_sum;
            under += r.class[0];
            over += r.class[3];
            queue.merge(&r.dur[0]);
            rejected += r.rejected.iter().filter(|(k, _)| crate::is_cycle_reason(k)).map(|(_, n)| n).sum::<u64>();
            if let (Some(a), Some(b)) = (r.first_start, r.last_end) {
                let e = spans.entry(s).or_insert((a, b));
                *e = (e.0.min(a), e.1.max(b));
            }
        }
        if let Some((litres, tonnes)) = fuel_share(shifts.values()) {
            fuel_l += litres;
            fuel_t += tonnes;
        }
    }
    let (mut hours, mut tonnes) = (0.0, 0.0);
    for (s, (a, b)) in &spans {
        let span = (b - a) as f64;
        if span >= min_span_s && span > 0.0 {
            hours += span / 3600.0;
            tonnes += trucks.values().filter_map(|m| m.get(*s)).map(|r| r.tonnes).sum::<f64>();
        }
    }
    let mut out = Vec::new();
    if hours > 0.0 {
        out.push(("tonnes_per_hour", tonnes / hours));
    }
    if cycles > 0 {
        let n = cycles as f64;
        out.push(("payload_ratio", ratio_sum / n));
        out.push(("overload_share", over as f64 / n));
        out.push(("underload_share", under as f64 / n));
    }
    if let Some(q) = queue.mean() {
        out.push(("loader_queue_s", q));
    }
    if fuel_t > 0.0 {
        out.push(("fuel_per_tonne", fuel_l / fuel_t));
    }
    let records = cycles + rejected;
    if records > 0 {
        out.push(("rejected_share", rejected as f64 / records as f64));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> TruckShift {
        let mut r = TruckShift { cycles: i % 7, tonnes: (i % 7) as f64 * 180.5, ratio_sum: (i % 7) as f64 * 0.93, ..Default::default() };
        r.class[0] = i % 3;
        r.class[3] = i % 2;
        r.dur[0].n = i % 5;
        r.dur[0].sum = (i % 5) as f64 * 61.0;
        r.litres = (i % 4) as f64 * 250.0;
        r.first_start = Some(1_000 * i as i64);
        r.last_end = Some(1_000 * i as i64 + 3_600 * (i % 9) as i64);
        if i % 6 == 0 {
            r.reject("zero_payload");
        }
        r
    }

    fn close(a: &Kpis, b: &Kpis) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|((n1, v1), (n2, v2))| n1 == n2 && (v1 - v2).abs() <= 1e-9 * v1.abs().max(1.0))
    }

    /// Records created, changed and removed in many small steps: the
    /// running totals always equal a recomputation from scratch.
    #[test]
    fn updates_by_difference_equal_a_full_recomputation() {
        let mut trucks: Trucks = BTreeMap::new();
        let mut totals = SiteTotals::default();
        for step in 0..2_000u64 {
            let truck = format!("T{}", step % 13);
            let shift = format!("S{}", step / 97 % 11);
            let mut touched = BTreeSet::new();
            if step % 17 == 0 {
                if let Some(m) = trucks.get_mut(&truck) {
                    m.remove(&shift);
                }
            } else {
                trucks.entry(truck.clone()).or_default().insert(shift.clone(), record(step));
            }
            touched.insert((truck, shift));
            totals.update(&trucks, &touched, 1800.0);
            let want = full(&trucks, step % 3, 1800.0);
            assert!(close(&totals.kpis(step % 3), &want), "step {step}: {:?} vs {want:?}", totals.kpis(step % 3));
        }
    }
}
