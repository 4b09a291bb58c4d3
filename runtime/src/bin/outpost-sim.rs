//! `outpost-sim`: replays real captures onto the site bus, one asset each.

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use outpost::config::parse_mqtt_url;
use outpost::sim::{self, Kind, Pace, Track};
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
    let mut tracks: Vec<Track> = Vec::new();
    for (specs, kind) in [(&args.nmea, Kind::Nmea), (&args.ubx, Kind::Ubx)] {
        for spec in specs {
            let (asset, path) = sim::parse_spec(spec)?;
            tracks.push(sim::load(&asset, kind, &path, args.chunk, args.bytes_per_sec)?);
        }
    }
    if tracks.is_empty() {
        bail!("nothing to replay: give at least one --nmea ASSET=FILE or --ubx ASSET=FILE");
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
        let topic = format!("site/{}/{}/{}", args.site, track.asset, track.kind.signal());
        let bar = bars.add(ProgressBar::new(track.messages.len() as u64));
        bar.set_style(style.clone());
        bar.set_prefix(track.asset.clone());
        sent_total += track.messages.len() as u64;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            for m in &track.messages {
                if let Some(d) = pace.delay(m.at) {
                    tokio::time::sleep_until(t0 + d).await;
                }
                if let Err(e) = client.publish(&topic, qos, false, m.payload.clone()).await {
                    bar.abandon_with_message(format!("publish failed: {e}"));
                    return (track.asset, topic, 0usize);
                }
                bar.inc(1);
            }
            bar.finish();
            (track.asset, topic, track.messages.len())
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
    Ok(())
}
