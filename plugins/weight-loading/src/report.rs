//! Output documents: the cycle summary, the loader advice, the per-(truck,
//! shift) report and the site shift report. Field names are the published
//! schema (see the crate README); times are site-local strings.

use crate::aggregate::{Class, LoaderRecent, LoaderShift, Session, Stat, TruckShift};
use crate::config::Limits;
use crate::input::{Cycle, CYCLE, DURATIONS};
use crate::time;
use serde::Serialize;
use std::collections::BTreeMap;

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Tonnes per hour over a span, when the span is at least `min_span_s`
/// (a lone cycle, or a degenerate record seconds long, says nothing of a rate).
pub fn rate(tonnes: f64, span_s: Option<f64>, min_span_s: f64) -> Option<f64> {
    span_s.filter(|s| *s >= min_span_s && *s > 0.0).map(|s| tonnes / (s / 3600.0))
}

/// Means of the durations, seconds (absent when no valid value).
#[derive(Debug, Serialize)]
pub struct DurationMeans {
    pub queue_s: Option<f64>,
    pub spot_s: Option<f64>,
    pub loading_s: Option<f64>,
    pub empty_travel_s: Option<f64>,
    pub full_travel_s: Option<f64>,
    pub dump_queue_s: Option<f64>,
    pub dumping_s: Option<f64>,
    pub cycle_s: Option<f64>,
}

impl DurationMeans {
    /// From values in `input::DURATIONS` order then `cycle_s`.
    pub fn from_values(v: [Option<f64>; 8]) -> DurationMeans {
        DurationMeans {
            queue_s: v[0],
            spot_s: v[1],
            loading_s: v[2],
            empty_travel_s: v[3],
            full_travel_s: v[4],
            dump_queue_s: v[5],
            dumping_s: v[6],
            cycle_s: v[CYCLE],
        }
    }

    fn of(stats: &[Stat; 8]) -> DurationMeans {
        DurationMeans::from_values(stats.map(|s| s.mean()))
    }
}

/// `svc/weight-loading/{truck}/cycle`: one accepted haul cycle.
#[derive(Debug, Serialize)]
pub struct CycleSummary<'a> {
    pub truck: &'a str,
    pub loader: Option<&'a str>,
    pub shift: &'a str,
    pub model: &'a str,
    pub full_time: String,
    pub empty_time: Option<String>,
    pub payload_t: f64,
    pub dump_payload_t: Option<f64>,
    pub rated_t: f64,
    pub target_t: f64,
    pub target_low_t: f64,
    pub target_high_t: f64,
    pub overload_limit_t: f64,
    /// payload - target, tonnes and percent of target.
    pub deviation_t: f64,
    pub deviation_pct: f64,
    /// payload / rated.
    pub ratio: f64,
    pub class: &'static str,
    /// Valid durations of this cycle; dropped ones are null and listed.
    pub durations: DurationMeans,
    pub dropped: Vec<&'static str>,
    /// `unaccounted_time` when the cycle holds more than `max_unaccounted_s`
    /// outside its stages: its tonnes count, its durations stay out of the means.
    pub flag: Option<&'static str>,
    /// `cycle_s` minus the sum of the seven stages (when all are known).
    pub unaccounted_s: Option<f64>,
    /// This record replaced an accepted, less consistent record of the same
    /// load (same truck and `full_time`); the earlier summary no longer counts.
    pub replaces_earlier: bool,
    pub load_location: Option<&'a str>,
    pub dump_location: Option<&'a str>,
    pub dump_unit: Option<&'a str>,
}

impl<'a> CycleSummary<'a> {
    pub fn new(c: &'a Cycle, model: &'a str, l: &Limits, durations: [Option<f64>; 8]) -> CycleSummary<'a> {
        let class = Class::of(c.payload_t, l);
        let mut names = DURATIONS.to_vec();
        names.push("cycle_s");
        let raw = c.durations.iter().copied().chain([c.cycle_s()]);
        let dropped = names.into_iter().zip(raw).zip(durations).filter(|((_, r), v)| r.is_some() && v.is_none());
        CycleSummary {
            truck: &c.truck,
            loader: c.loader.as_deref(),
            shift: &c.shift,
            model,
            full_time: time::format(c.full),
            empty_time: c.empty.map(time::format),
            payload_t: c.payload_t,
            dump_payload_t: c.dump_payload_t,
            rated_t: l.rated_t,
            target_t: l.target_t,
            target_low_t: l.low_t,
            target_high_t: l.high_t,
            overload_limit_t: l.overload_t,
            deviation_t: c.payload_t - l.target_t,
            deviation_pct: (c.payload_t - l.target_t) / l.target_t * 100.0,
            ratio: c.payload_t / l.rated_t,
            class: class.as_str(),
            durations: DurationMeans::from_values(durations),
            dropped: dropped.map(|((n, _), _)| n).collect(),
            flag: None,
            unaccounted_s: None,
            replaces_earlier: false,
            load_location: c.load_location.as_deref(),
            dump_location: c.dump_location.as_deref(),
            dump_unit: c.dump_unit.as_deref(),
        }
    }
}

/// The loader's recent bias, over its latest loads.
#[derive(Debug, Serialize)]
pub struct Recent {
    pub loads: usize,
    pub mean_payload_t: Option<f64>,
    pub mean_deviation_t: Option<f64>,
    pub mean_deviation_pct: Option<f64>,
    pub under: usize,
    pub over: usize,
    pub overload: usize,
}

impl Recent {
    pub fn of(r: &LoaderRecent) -> Recent {
        let n = r.loads.len();
        let mean = |f: &dyn Fn(&crate::aggregate::RecentLoad) -> f64| {
            (n > 0).then(|| r.loads.iter().map(f).sum::<f64>() / n as f64)
        };
        let class = |c: Class| r.loads.iter().filter(|l| usize::from(l.class) == c.index()).count();
        Recent {
            loads: n,
            mean_payload_t: mean(&|l| l.payload_t),
            mean_deviation_t: mean(&|l| l.payload_t - l.target_t),
            mean_deviation_pct: mean(&|l| (l.payload_t - l.target_t) / l.target_t * 100.0),
            under: class(Class::Under),
            over: class(Class::Over),
            overload: class(Class::Overload),
        }
    }
}

/// `svc/weight-loading/{loader}/advice` after a completed load.
#[derive(Debug, Serialize)]
pub struct LoadAdvice<'a> {
    pub loader: &'a str,
    pub kind: &'static str,
    pub truck: &'a str,
    pub full_time: String,
    pub payload_t: f64,
    pub target_t: f64,
    pub deviation_t: f64,
    pub class: &'static str,
    /// Sum of the buckets weighed for this truck, when the loader sent them.
    pub bucket_total_t: Option<f64>,
    pub recent: Recent,
    /// "load_less", "load_more" or "on_target": the recent mean deviation
    /// against half the target band.
    pub advice: &'static str,
    pub message: String,
}

impl<'a> LoadAdvice<'a> {
    pub fn new(
        loader: &'a str,
        c: &'a Cycle,
        l: &Limits,
        band_pct: f64,
        recent: &LoaderRecent,
        buckets: Option<f64>,
    ) -> Self {
        let r = Recent::of(recent);
        let dev = r.mean_deviation_t.unwrap_or(0.0);
        let dev_pct = r.mean_deviation_pct.unwrap_or(0.0);
        let (advice, message) = if dev_pct > band_pct / 2.0 {
            ("load_less", format!("last {} loads average {dev:.1} t ({dev_pct:+.1}%) over target: load less", r.loads))
        } else if dev_pct < -band_pct / 2.0 {
            (
                "load_more",
                format!("last {} loads average {:.1} t ({dev_pct:+.1}%) under target: load more", r.loads, -dev),
            )
        } else {
            ("on_target", format!("last {} loads average {dev:+.1} t ({dev_pct:+.1}%) from target", r.loads))
        };
        LoadAdvice {
            loader,
            kind: "load",
            truck: &c.truck,
            full_time: time::format(c.full),
            payload_t: c.payload_t,
            target_t: l.target_t,
            deviation_t: c.payload_t - l.target_t,
            class: Class::of(c.payload_t, l).as_str(),
            bucket_total_t: buckets,
            recent: r,
            advice,
            message,
        }
    }
}

/// `svc/weight-loading/{loader}/advice` after each bucket.
#[derive(Debug, Serialize)]
pub struct BucketAdvice<'a> {
    pub loader: &'a str,
    pub kind: &'static str,
    pub truck: &'a str,
    pub model: &'a str,
    pub pass: u32,
    pub bucket_t: f64,
    pub loaded_t: f64,
    pub target_t: f64,
    pub target_low_t: f64,
    pub target_high_t: f64,
    pub overload_limit_t: f64,
    /// Tonnes still to add to reach the target (0 once reached).
    pub to_add_t: f64,
    /// Expected next bucket: the mean of this truck's buckets so far.
    pub next_bucket_t: f64,
    /// "add" (a full bucket fits), "partial" (below the band but a full
    /// bucket would overload: add `to_add_t` only), "done" (in or above the
    /// band), "overloaded" (above the overload limit).
    pub status: &'static str,
    /// "next_bucket_overload" when another full bucket would exceed the
    /// overload limit, "overloaded" when the load already does.
    pub warning: Option<&'static str>,
    /// Passes never received (weights incomplete: the load is heavier).
    pub missing_passes: u32,
    pub message: String,
}

impl<'a> BucketAdvice<'a> {
    pub fn new(loader: &'a str, s: &'a Session, l: &Limits) -> BucketAdvice<'a> {
        let loaded = s.loaded_t();
        let (pass, bucket) = s.passes.last().map_or((0, 0.0), |p| (p.0, p.1));
        let next = if s.passes.is_empty() { 0.0 } else { loaded / s.passes.len() as f64 };
        let to_add = (l.target_t - loaded).max(0.0);
        let next_overloads = loaded + next > l.overload_t;
        let (status, warning) = if loaded > l.overload_t {
            ("overloaded", Some("overloaded"))
        } else if loaded >= l.low_t {
            ("done", next_overloads.then_some("next_bucket_overload"))
        } else if next_overloads {
            ("partial", Some("next_bucket_overload"))
        } else {
            ("add", None)
        };
        let message = match status {
            "overloaded" => format!(
                "OVERLOADED: {loaded:.1} t is {:.1} t above the {:.1} t limit; take material off",
                loaded - l.overload_t,
                l.overload_t
            ),
            "done" if next_overloads => {
                format!("done: {loaded:.1} t loaded; do not add another bucket (it would exceed {:.1} t)", l.overload_t)
            }
            "done" => format!("done: {loaded:.1} t loaded (target {:.1} t)", l.target_t),
            "partial" => format!(
                "add {to_add:.1} t only: a full bucket ({next:.1} t) would exceed the {:.1} t limit",
                l.overload_t
            ),
            _ => format!("add {to_add:.1} t (about {:.1} more buckets)", if next > 0.0 { to_add / next } else { 0.0 }),
        };
        BucketAdvice {
            loader,
            kind: "bucket",
            truck: &s.truck,
            model: &s.model,
            pass,
            bucket_t: bucket,
            loaded_t: loaded,
            target_t: l.target_t,
            target_low_t: l.low_t,
            target_high_t: l.high_t,
            overload_limit_t: l.overload_t,
            to_add_t: to_add,
            next_bucket_t: next,
            status,
            warning,
            missing_passes: s.missing,
            message,
        }
    }
}

/// `svc/weight-loading/{truck}/shift`: the running report of one truck in one shift.
#[derive(Debug, Serialize)]
pub struct TruckShiftReport<'a> {
    pub site: &'a str,
    pub truck: &'a str,
    pub shift: &'a str,
    pub model: &'a str,
    pub known: bool,
    pub rated_t: f64,
    pub target_t: f64,
    pub cycles: u64,
    pub tonnes: f64,
    pub mean_payload_t: Option<f64>,
    pub payload_ratio: Option<f64>,
    pub under: u64,
    pub ok: u64,
    pub over: u64,
    pub overload: u64,
    /// Queue time at the loader: total and mean over cycles with a valid `queue_s`.
    pub queue_s_total: f64,
    pub queue_s_mean: Option<f64>,
    pub queue_n: u64,
    pub means: DurationMeans,
    pub first_start: Option<String>,
    pub last_end: Option<String>,
    pub span_h: Option<f64>,
    pub tonnes_per_hour: Option<f64>,
    pub refuels: u64,
    pub litres: f64,
    pub fuel_queue_min_mean: Option<f64>,
    pub rejected: &'a BTreeMap<String, u64>,
    pub rejected_total: u64,
    /// Accepted cycles flagged, by reason (kept out of `means`).
    pub flagged: &'a BTreeMap<String, u64>,
}

impl<'a> TruckShiftReport<'a> {
    pub fn new(
        site: &'a str,
        truck: &'a str,
        shift: &'a str,
        r: &'a TruckShift,
        l: &Limits,
        known: bool,
        min_span_s: f64,
    ) -> Self {
        let span_h = r.span_s().map(|s| s / 3600.0);
        TruckShiftReport {
            site,
            truck,
            shift,
            model: &r.model,
            known,
            rated_t: l.rated_t,
            target_t: l.target_t,
            cycles: r.cycles,
            tonnes: r.tonnes,
            mean_payload_t: ratio(r.tonnes, r.cycles as f64),
            payload_ratio: ratio(r.ratio_sum, r.cycles as f64),
            under: r.class[0],
            ok: r.class[1],
            over: r.class[2],
            overload: r.class[3],
            queue_s_total: r.dur[0].sum,
            queue_s_mean: r.dur[0].mean(),
            queue_n: r.dur[0].n,
            means: DurationMeans::of(&r.dur),
            first_start: r.first_start.map(time::format),
            last_end: r.last_end.map(time::format),
            span_h,
            tonnes_per_hour: rate(r.tonnes, r.span_s(), min_span_s),
            refuels: r.refuels,
            litres: r.litres,
            fuel_queue_min_mean: r.fuel_queue_min.mean(),
            rejected: &r.rejected,
            rejected_total: r.rejected_total(),
            flagged: &r.flagged,
        }
    }
}

/// One truck's line in the site shift report.
#[derive(Debug, Serialize)]
pub struct TruckRow<'a> {
    pub truck: &'a str,
    pub cycles: u64,
    pub tonnes: f64,
    pub mean_payload_t: Option<f64>,
    pub overload: u64,
    pub under: u64,
    pub queue_s_total: f64,
    pub queue_s_mean: Option<f64>,
    pub tonnes_per_hour: Option<f64>,
    pub refuels: u64,
    pub litres: f64,
    pub rejected_total: u64,
}

/// One loader's line in the site shift report.
#[derive(Debug, Serialize)]
pub struct LoaderRow<'a> {
    pub loader: &'a str,
    pub cycles: u64,
    pub tonnes: f64,
    pub mean_payload_t: Option<f64>,
    pub mean_deviation_t: Option<f64>,
    pub under: u64,
    pub overload: u64,
    pub queue_s_mean: Option<f64>,
    pub loading_s_mean: Option<f64>,
}

/// `svc/weight-loading/site/{site}/shift`: the whole site in one shift.
#[derive(Debug, Serialize)]
pub struct SiteShiftReport<'a> {
    pub site: &'a str,
    pub shift: &'a str,
    /// Trucks with any record in the shift (cycles, rejections or refuels).
    pub trucks: usize,
    /// Trucks with at least one accepted cycle: the trucks that worked.
    pub trucks_working: usize,
    /// Trucks whose every cycle record was rejected (no accepted cycle): a
    /// scale or data feed to look at, not idle trucks.
    pub trucks_rejected_only: Vec<&'a str>,
    pub cycles: u64,
    pub tonnes: f64,
    pub mean_payload_t: Option<f64>,
    pub payload_ratio: Option<f64>,
    pub under: u64,
    pub ok: u64,
    pub over: u64,
    pub overload: u64,
    pub overload_share: Option<f64>,
    pub underload_share: Option<f64>,
    pub queue_s_total: f64,
    pub queue_s_mean: Option<f64>,
    /// First cycle start to last cycle end over every truck.
    pub first_start: Option<String>,
    pub last_end: Option<String>,
    pub span_h: Option<f64>,
    pub tonnes_per_hour: Option<f64>,
    /// Sum of the trucks' own spans (first cycle start to last cycle end).
    pub truck_hours: f64,
    pub refuels: u64,
    pub litres: f64,
    pub rejected: BTreeMap<String, u64>,
    pub rejected_total: u64,
    /// Accepted cycles flagged, by reason.
    pub flagged: BTreeMap<String, u64>,
    /// Site-wide rejections with no truck or shift to charge them to (all shifts).
    pub rejected_unattributed: &'a BTreeMap<String, u64>,
    pub per_truck: Vec<TruckRow<'a>>,
    pub per_loader: Vec<LoaderRow<'a>>,
}

impl<'a> SiteShiftReport<'a> {
    pub fn new(
        site: &'a str,
        shift: &'a str,
        trucks: &[(&'a str, &'a TruckShift)],
        loaders: &[(&'a str, &'a LoaderShift)],
        unattributed: &'a BTreeMap<String, u64>,
        min_span_s: f64,
    ) -> Self {
        let mut total = TruckShift::default();
        let mut truck_hours = 0.0;
        let mut rows = Vec::new();
        let (mut working, mut rejected_only) = (0, Vec::new());
        for (name, r) in trucks {
            if r.cycles > 0 {
                working += 1;
            } else if r.cycles_rejected() > 0 {
                rejected_only.push(*name);
            }
            for (k, n) in &r.flagged {
                *total.flagged.entry(k.clone()).or_insert(0) += n;
            }
            total.cycles += r.cycles;
            total.tonnes += r.tonnes;
            total.ratio_sum += r.ratio_sum;
            for (a, b) in total.class.iter_mut().zip(r.class) {
                *a += b;
            }
            total.dur[0].merge(&r.dur[0]);
            total.refuels += r.refuels;
            total.litres += r.litres;
            for (k, n) in &r.rejected {
                *total.rejected.entry(k.clone()).or_insert(0) += n;
            }
            if r.cycles > 0 {
                total.first_start = [total.first_start, r.first_start].into_iter().flatten().min();
                total.last_end = [total.last_end, r.last_end].into_iter().flatten().max();
            }
            let span_h = r.span_s().map(|s| s / 3600.0);
            truck_hours += span_h.unwrap_or(0.0);
            rows.push(TruckRow {
                truck: name,
                cycles: r.cycles,
                tonnes: r.tonnes,
                mean_payload_t: ratio(r.tonnes, r.cycles as f64),
                overload: r.class[3],
                under: r.class[0],
                queue_s_total: r.dur[0].sum,
                queue_s_mean: r.dur[0].mean(),
                tonnes_per_hour: rate(r.tonnes, r.span_s(), min_span_s),
                refuels: r.refuels,
                litres: r.litres,
                rejected_total: r.rejected_total(),
            });
        }
        let per_loader = loaders
            .iter()
            .map(|(name, l)| LoaderRow {
                loader: name,
                cycles: l.cycles,
                tonnes: l.tonnes,
                mean_payload_t: ratio(l.tonnes, l.cycles as f64),
                mean_deviation_t: ratio(l.dev_sum, l.cycles as f64),
                under: l.class[0],
                overload: l.class[3],
                queue_s_mean: l.queue_s.mean(),
                loading_s_mean: l.loading_s.mean(),
            })
            .collect();
        let n = total.cycles as f64;
        let span_h = total.span_s().map(|s| s / 3600.0);
        SiteShiftReport {
            site,
            shift,
            trucks: trucks.len(),
            trucks_working: working,
            trucks_rejected_only: rejected_only,
            cycles: total.cycles,
            tonnes: total.tonnes,
            mean_payload_t: ratio(total.tonnes, n),
            payload_ratio: ratio(total.ratio_sum, n),
            under: total.class[0],
            ok: total.class[1],
            over: total.class[2],
            overload: total.class[3],
            overload_share: ratio(total.class[3] as f64, n),
            underload_share: ratio(total.class[0] as f64, n),
            queue_s_total: total.dur[0].sum,
            queue_s_mean: total.dur[0].mean(),
            first_start: total.first_start.map(time::format),
            last_end: total.last_end.map(time::format),
            span_h,
            tonnes_per_hour: rate(total.tonnes, total.span_s(), min_span_s),
            truck_hours,
            refuels: total.refuels,
            litres: total.litres,
            rejected_total: total.rejected_total(),
            rejected: total.rejected,
            flagged: total.flagged,
            rejected_unattributed: unattributed,
            per_truck: rows,
            per_loader,
        }
    }
}
