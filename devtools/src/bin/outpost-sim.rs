//! `outpost-sim`: replays recorded field data (GNSS captures, haul cycles,
//! refuelling, scene tracks, recordings of live bus traffic) onto the site bus.

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use outpost::config::parse_mqtt_url;
use outpost_devtools::sim::scene::{SceneOptions, SceneOutput};
use outpost_devtools::sim::{self, Kind, Pace, Track};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(version, about = "Replay recorded field data onto an Outpost site bus")]
struct Args {
    /// Broker to publish to.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker: String,
    /// Site id used in topics: site/{site}/{asset}/...
    #[arg(long, default_value = "demo")]
    site: String,
    /// NMEA 0183 capture for an asset: ASSET=FILE (repeatable).
    #[arg(long, value_name = "ASSET=FILE")]
    nmea: Vec<String>,
    /// u-blox UBX binary capture for an asset: ASSET=FILE (repeatable).
    #[arg(long, value_name = "ASSET=FILE")]
    ubx: Vec<String>,
    /// Haul-cycle export (one row per cycle, dispatch-system columns):
    /// each row goes to site/{site}/{truck}/payload when the cycle ends.
    #[arg(long, value_name = "CSV")]
    haul: Vec<std::path::PathBuf>,
    /// Refuelling export: each event goes to site/{site}/{truck}/fuel.
    #[arg(long, value_name = "CSV")]
    fuel: Vec<std::path::PathBuf>,
    /// SCADA history of a water network: a directory with pressures.csv,
    /// flows.csv, demands.csv, levels.csv; one message per time step on
    /// site/{site}/{network}/scada.
    #[arg(long, value_name = "DIR")]
    scada: Vec<std::path::PathBuf>,
    /// A recording of live bus traffic (`outpostctl record`): every message
    /// on its recorded topic at its recorded offset (repeatable).
    #[arg(long, value_name = "FILE")]
    recording: Vec<std::path::PathBuf>,
    /// Network id used in SCADA topics.
    #[arg(long, default_value = "ltown")]
    network: String,
    /// Track file of a scene in local metres (track_id, timestep|time_s,
    /// position_x/y, velocity_x/y): every asset's receiver output.
    #[arg(long, value_name = "CSV")]
    tracks: Vec<std::path::PathBuf>,
    /// Latitude,longitude of the track file's local origin.
    #[arg(long, value_name = "LAT,LON", default_value = "-23.4400,-70.2500", allow_hyphen_values = true)]
    origin: String,
    /// Local x,y (m) that sits at --origin.
    #[arg(long, value_name = "X,Y", default_value = "0,0", allow_hyphen_values = true)]
    origin_xy: String,
    /// Seconds per `timestep` in a track file.
    #[arg(long, default_value_t = 0.1)]
    period: f64,
    /// Track files as NMEA through positioning (`nmea`) or as ready fixes
    /// on svc/positioning/{asset}/fix (`fix`).
    #[arg(long, value_name = "nmea|fix", default_value = "nmea")]
    tracks_as: String,
    /// object_type values in a track file that carry no receiver.
    #[arg(long, value_delimiter = ',', default_value = "static,background")]
    skip_types: Vec<String>,
    /// Replay speed factor (1 = original timing).
    #[arg(long, default_value_t = 1.0, conflicts_with = "fast")]
    speed: f64,
    /// As fast as possible.
    #[arg(long)]
    fast: bool,
    /// Bytes per message for binary captures.
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    /// Pace of binary captures at speed 1, bytes per second (9600 baud ~ 960).
    #[arg(long, default_value_t = 960.0)]
    bytes_per_sec: f64,
    /// MQTT QoS of published messages (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    outpost::telemetry::init_tracing();
    let args = Args::parse();
    if args.speed.is_nan() || args.speed <= 0.0 {
        bail!("--speed must be greater than 0");
    }
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        q => bail!("--qos {q}: use 0 or 1"),
    };
    if !sim::valid_level(&args.site) {
        bail!("--site '{}' must be one topic level (no '/', '+' or '#')", args.site);
    }
    let mut tracks: Vec<Track> = Vec::new();
    for (specs, kind) in [(&args.nmea, Kind::Nmea), (&args.ubx, Kind::Ubx)] {
        for spec in specs {
            let (asset, path) = sim::parse_spec(spec)?;
            tracks.push(sim::load(&args.site, &asset, kind, &path, args.chunk, args.bytes_per_sec)?);
        }
    }
    for path in &args.haul {
        tracks.push(sim::haul::load_cycles(&args.site, path)?);
    }
    for path in &args.fuel {
        tracks.push(sim::haul::load_fuel(&args.site, path)?);
    }
    for dir in &args.scada {
        tracks.push(sim::scada::load(&args.site, &args.network, dir)?);
    }
    for path in &args.recording {
        tracks.push(sim::recording::load(path)?);
    }
    if !args.tracks.is_empty() {
        let opts = scene_options(&args)?;
        for path in &args.tracks {
            tracks.push(sim::scene::load(&args.site, path, &opts)?);
        }
    }
    if tracks.is_empty() {
        bail!("nothing to replay: give --nmea ASSET=FILE, --ubx ASSET=FILE, --haul CSV, --fuel CSV, --tracks CSV, --scada DIR or --recording FILE");
    }
    sim::align(&mut tracks);
    for t in &tracks {
        if t.skipped_count > 0 {
            eprintln!(
                "outpost-sim: {}: {} rows skipped, e.g. {}",
                t.path.display(),
                t.skipped_count,
                t.skipped.join("; ")
            );
        }
    }
    let pace = if args.fast { Pace::AsFastAsPossible } else { Pace::Speed(args.speed) };
    let (host, port) = parse_mqtt_url(&args.broker).map_err(anyhow::Error::msg)?;
    let mut opts = MqttOptions::new(format!("outpost-sim-{}", std::process::id()), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let acks = acked.clone();
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let driver = tokio::spawn(async move {
        let mut connected = Some(connected_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                // Our own disconnect at the end: nothing more to drive.
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => match connected.take() {
                    Some(tx) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                },
            }
        }
    });
    connected_rx
        .await
        .context("MQTT driver stopped")?
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e} (is the agent or broker running?)", args.broker))?;

    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} msgs {elapsed_precise} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut sent_total = 0u64;
    for track in tracks {
        let bar = bars.add(ProgressBar::new(track.messages.len() as u64));
        bar.set_style(style.clone());
        bar.set_prefix(track.name.clone());
        sent_total += track.messages.len() as u64;
        let client = client.clone();
        let t0 = tokio::time::Instant::now();
        tasks.push(tokio::spawn(async move {
            let topics = track.messages.iter().map(|m| m.topic.as_str()).collect::<std::collections::BTreeSet<_>>();
            let topic = match topics.len() {
                1 => topics.first().map(|t| t.to_string()).unwrap_or_default(),
                n => format!("{n} topics"),
            };
            for m in &track.messages {
                if let Some(d) = pace.delay(m.at) {
                    tokio::time::sleep_until(t0 + d).await;
                }
                if let Err(e) = client.publish(&m.topic, qos, false, m.payload.clone()).await {
                    bar.abandon_with_message(format!("publish failed: {e}"));
                    return (track.name, topic, 0usize);
                }
                bar.inc(1);
            }
            bar.finish();
            (track.name, topic, track.messages.len())
        }));
    }
    let mut summary = Vec::new();
    for t in tasks {
        summary.push(t.await.context("replay task failed")?);
    }
    if qos == QoS::AtLeastOnce {
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::Relaxed) < sent_total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    for (asset, topic, n) in &summary {
        eprintln!("outpost-sim: {asset}: {n} messages on {topic}");
    }
    eprintln!(
        "outpost-sim: {} messages in {:.2}s{}",
        sent_total,
        started.elapsed().as_secs_f64(),
        if qos == QoS::AtLeastOnce {
            format!(", {} acknowledged by the broker", acked.load(Ordering::Relaxed))
        } else {
            String::new()
        }
    );
    let unacked = sent_total.saturating_sub(acked.load(Ordering::Relaxed));
    if qos == QoS::AtLeastOnce && unacked > 0 {
        bail!("{unacked} of {sent_total} messages were not acknowledged by the broker within 30 s of the last publish; check that {} is up and not overloaded", args.broker);
    }
    Ok(())
}

fn scene_options(args: &Args) -> anyhow::Result<SceneOptions> {
    let pair = |text: &str, what: &str| -> anyhow::Result<(f64, f64)> {
        let parsed = text.split_once(',').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        match parsed {
            Some((a, b)) if f64::is_finite(a) && f64::is_finite(b) => Ok((a, b)),
            _ => bail!("{what} '{text}': expected two numbers separated by a comma"),
        }
    };
    let origin = pair(&args.origin, "--origin")?;
    if origin.0.abs() > 89.0 || origin.1.abs() > 180.0 {
        bail!("--origin {},{}: latitude must be within ±89°, longitude within ±180°", origin.0, origin.1);
    }
    if !(args.period > 0.0 && args.period.is_finite()) {
        bail!("--period must be a positive number of seconds");
    }
    let output = match args.tracks_as.as_str() {
        "nmea" => SceneOutput::Nmea,
        "fix" => SceneOutput::Fix,
        other => bail!("--tracks-as {other}: use nmea or fix"),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(SceneOptions {
        origin,
        origin_xy: pair(&args.origin_xy, "--origin-xy")?,
        period_s: args.period,
        start_utc: now as f64,
        skip_types: args.skip_types.clone(),
        output,
    })
}
