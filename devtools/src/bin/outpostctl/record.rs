//! `outpostctl record`: captures live bus traffic of chosen topics to a
//! recording (JSON Lines, format in `outpost_devtools::sim::recording`) that
//! `outpostctl run --replay` and `outpost-sim --recording` replay.

use anyhow::{bail, Context};
use clap::Args;
use outpost_devtools::sim::recording::Recorder;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct Record {
    /// Topic filters to record (MQTT wildcards allowed).
    #[arg(required = true)]
    pub topics: Vec<String>,
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// The recording to write (JSON Lines; `.jsonl` is what `run --replay` recognises).
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds (counted from the subscription).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(args: Record) -> anyhow::Result<()> {
    for t in &args.topics {
        outpost::topic::validate_filter(t).map_err(anyhow::Error::msg)?;
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
    }
    if args.count == Some(0) {
        bail!("--count must be at least 1");
    }
    outpost::config::parse_mqtt_url(&args.broker).map_err(anyhow::Error::msg)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .create_new(!args.force)
        .open(&args.out)
        .with_context(|| {
            format!("cannot create {} (an existing recording is kept; --force replaces it)", args.out.display())
        })?;
    let mut recorder = Recorder::new(std::io::BufWriter::new(file));
    let result = record(&args, &mut recorder).await;
    if result.is_err() && recorder.count == 0 {
        // Nothing recorded: leave no empty file behind to trip the next try.
        let _ = std::fs::remove_file(&args.out);
    }
    let reason = result?;
    progress(&recorder, true);
    recorder.into_inner().flush().with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("stopped: {reason}");
    Ok(())
}

type Out = std::io::BufWriter<std::fs::File>;

/// Subscribes and records until the count, the duration or Ctrl-C; why it stopped.
async fn record(args: &Record, recorder: &mut Recorder<Out>) -> anyhow::Result<&'static str> {
    let (host, port) = outpost::config::parse_mqtt_url(&args.broker).map_err(anyhow::Error::msg)?;
    let mut opts = MqttOptions::new(format!("outpostctl-record-{}", std::process::id()), host, port);
    opts.set_max_packet_size(outpost::bus::MAX_PACKET, outpost::bus::MAX_PACKET);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let mut subscribed = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut pending_subacks = 0usize;
    let mut last_progress = Instant::now();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let reason = loop {
        let sleep_until = deadline.unwrap_or_else(tokio::time::Instant::now);
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => break "duration reached",
            _ = &mut stop => break "interrupted",
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Also after a reconnect: a clean session forgets subscriptions.
                for t in &args.topics {
                    client.subscribe(t.clone(), QoS::AtLeastOnce).await?;
                }
                pending_subacks = args.topics.len();
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                use rumqttc::SubscribeReasonCode;
                if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                    bail!("{} refused a subscription of {:?}", args.broker, args.topics);
                }
                pending_subacks = pending_subacks.saturating_sub(1);
                if pending_subacks == 0 && !subscribed {
                    subscribed = true;
                    eprintln!("recording {} from {} into {}", args.topics.join(" "), args.broker, args.out.display());
                    deadline = args.duration.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                recorder
                    .record(Instant::now(), &p.topic, &p.payload)
                    .with_context(|| format!("cannot write {}", args.out.display()))?;
                if last_progress.elapsed() >= Duration::from_secs(1) {
                    progress(recorder, false);
                    last_progress = Instant::now();
                }
                if args.count.is_some_and(|c| recorder.count >= c) {
                    break "count reached";
                }
            }
            Ok(_) => {}
            Err(e) if !subscribed => {
                bail!("connection to {} failed: {e} (is the agent or broker running?)", args.broker)
            }
            Err(e) => {
                eprintln!("\nconnection to {} lost: {e}; reconnecting", args.broker);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let _ = client.disconnect().await;
    Ok(reason)
}

fn progress<W: Write>(r: &Recorder<W>, last: bool) {
    let line = format!("\r{} messages, {} payload bytes recorded", r.count, r.bytes);
    if last {
        eprintln!("{line}");
    } else {
        eprint!("{line}");
    }
}
