//! Topic names of the fleet protocol, and reading a gateway id back out of one.

/// Root of every fleet topic.
pub const ROOT: &str = "outpost/fleet";

/// Which fleet topic a message arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetTopic<'a> {
    Desired(&'a str),
    Reported(&'a str),
    Events(&'a str),
    /// `outpost/fleet/{gw}/data/{rest}`: data the customer's policy lets out.
    Data { gateway: &'a str, topic: &'a str },
}

/// Retained desired state for one gateway (operations center → gateway).
pub fn desired(gateway: &str) -> String {
    format!("{ROOT}/{gateway}/desired")
}

/// A gateway's reported state (gateway → operations center).
pub fn reported(gateway: &str) -> String {
    format!("{ROOT}/{gateway}/reported")
}

/// A gateway's lifecycle events (gateway → operations center).
pub fn events(gateway: &str) -> String {
    format!("{ROOT}/{gateway}/events")
}

/// Exported site data on its local topic (gateway → operations center).
pub fn data(gateway: &str, local_topic: &str) -> String {
    format!("{ROOT}/{gateway}/data/{local_topic}")
}

/// Subscription filters the operations center uses for every gateway.
pub const OPS_SUBSCRIPTIONS: [&str; 3] = ["outpost/fleet/+/reported", "outpost/fleet/+/events", "outpost/fleet/+/data/#"];

/// Parses a fleet topic; `None` for anything else (including a gateway id
/// that [`valid_gateway_id`] refuses).
pub fn parse(topic: &str) -> Option<FleetTopic<'_>> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (gw, kind) = rest.split_once('/')?;
    if !valid_gateway_id(gw) {
        return None;
    }
    match kind {
        "desired" => Some(FleetTopic::Desired(gw)),
        "reported" => Some(FleetTopic::Reported(gw)),
        "events" => Some(FleetTopic::Events(gw)),
        _ => {
            let t = kind.strip_prefix("data/")?;
            (!t.is_empty()).then_some(FleetTopic::Data { gateway: gw, topic: t })
        }
    }
}

/// A gateway id is 1 to 64 of `[A-Za-z0-9._-]`: it is a topic level, an
/// MQTT user name and a file name, so nothing else is allowed.
pub fn valid_gateway_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        assert_eq!(parse(&desired("gw-1")), Some(FleetTopic::Desired("gw-1")));
        assert_eq!(parse(&reported("gw-1")), Some(FleetTopic::Reported("gw-1")));
        assert_eq!(parse(&events("gw-1")), Some(FleetTopic::Events("gw-1")));
        assert_eq!(
            parse(&data("gw-1", "svc/weight-loading/site/shift")),
            Some(FleetTopic::Data { gateway: "gw-1", topic: "svc/weight-loading/site/shift" })
        );
    }

    #[test]
    fn foreign_and_malformed_topics_are_not_fleet_topics() {
        for t in [
            "outpost/fleet",
            "outpost/fleet/",
            "outpost/fleet/gw",
            "outpost/fleet/gw/other",
            "outpost/fleet/gw/data/",
            "outpost/fleet/+/reported",
            "outpost/fleet/a b/reported",
            "outpost/fleetx/gw/reported",
            "svc/positioning/x/fix",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
    }
}
