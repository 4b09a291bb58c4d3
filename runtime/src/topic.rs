//! MQTT topic filters: matching, overlap and validation. Shared by the
//! router (who receives what) and the publish ACL (who may send what).

/// Does `topic` match `filter` (`+` one level, `#` the rest, including none)?
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Could some topic match both filters? Used to find subscriptions that are
/// served inside the agent (they overlap a local service's publish list).
pub fn overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks a filter against the MQTT rules; returns why it is invalid.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("topic filter is empty".into());
    }
    if filter.len() > 65_535 {
        return Err("topic filter is longer than 65535 bytes".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("'#' must be a whole level and the last one in '{filter}'"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("'+' must be a whole level in '{filter}'"));
        }
    }
    Ok(())
}

/// Checks a concrete topic (no wildcards) that a service publishes to.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic is empty".into());
    }
    if topic.len() > 65_535 {
        return Err("topic is longer than 65535 bytes".into());
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(format!("topic '{}' contains a wildcard or NUL", topic.escape_debug()));
    }
    Ok(())
}

/// The `index`-th level of a topic (0-based).
pub fn segment(topic: &str, index: usize) -> Option<&str> {
    topic.split('/').nth(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_mqtt() {
        assert!(matches("site/+/+/gnss/nmea", "site/s1/truck7/gnss/nmea"));
        assert!(!matches("site/+/+/gnss/nmea", "site/s1/truck7/gnss/ubx"));
        assert!(!matches("site/+/+/gnss/nmea", "site/s1/gnss/nmea"));
        assert!(matches("site/#", "site"));
        assert!(matches("site/#", "site/a/b/c"));
        assert!(!matches("svc/+/fix", "svc/a/b/fix"));
    }

    #[test]
    fn overlap_finds_shared_topics() {
        assert!(overlap("svc/positioning/+/fix", "svc/+/+/fix"));
        assert!(overlap("svc/#", "svc/positioning/x/fix"));
        assert!(!overlap("svc/positioning/+/fix", "svc/traffic/+/warning"));
        assert!(!overlap("a/b", "a/b/c"));
    }

    #[test]
    fn invalid_filters_are_named() {
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b+").is_err());
        assert!(validate_filter("").is_err());
        assert!(validate_filter("a/+/#").is_ok());
        assert!(validate_topic("a/+/b").is_err());
    }
}
