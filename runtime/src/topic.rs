//! MQTT topic filters: matching, overlap and validation. Shared by the
//! router (who receives what) and the publish ACL (who may send what).

/// Does `topic` match `filter` (`+` one level, `#` the rest, including none)?
pub fn matches(filter: &str, topic: &str) -> bool {
    // One walk over both strings, level by level: this runs for every
    // message against every filter, where `split` and slice comparison
    // cost a searcher and a `memcmp` call per level. `i`/`j` are where the
    // current level starts; `len + 1` means no level is left (so "a/"
    // still has an empty last level, as with `split`).
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    let (mut i, mut j) = (0, 0);
    let whole = |s: &[u8], at: usize, c: u8| s.get(at) == Some(&c) && (at + 1 == s.len() || s[at + 1] == b'/');
    loop {
        match (i <= f.len(), j <= t.len()) {
            (false, false) => return true,
            (true, _) if whole(f, i, b'#') => return true,
            (true, true) if whole(f, i, b'+') => {
                i += 2;
                while j < t.len() && t[j] != b'/' {
                    j += 1;
                }
                j += 1;
            }
            (true, true) => {
                loop {
                    let (f_end, t_end) = (i == f.len() || f[i] == b'/', j == t.len() || t[j] == b'/');
                    if f_end && t_end {
                        break;
                    }
                    if f_end || t_end || f[i] != t[j] {
                        return false;
                    }
                    i += 1;
                    j += 1;
                }
                i += 1;
                j += 1;
            }
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
    if topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0)) {
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

    /// The byte walk agrees with the level-by-level definition (MQTT 4.7)
    /// that the SDK's fake host uses when services are tested natively, on
    /// every filter and topic of up to four levels over a small alphabet,
    /// empty levels included.
    #[test]
    fn matching_agrees_with_the_definition_exhaustively() {
        use outpost_sdk::testing::topic_matches as by_levels;
        fn all(alphabet: &[&str]) -> Vec<String> {
            let mut out: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
            let mut last = out.clone();
            for _ in 1..4 {
                last = last.iter().flat_map(|p| alphabet.iter().map(move |l| format!("{p}/{l}"))).collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        let filters = all(&["a", "ab", "", "+", "#"]);
        let topics = all(&["a", "ab", "b", ""]);
        let mut checked = 0;
        for f in &filters {
            for t in &topics {
                assert_eq!(matches(f, t), by_levels(f, t), "filter {f:?}, topic {t:?}");
                checked += 1;
            }
        }
        assert!(checked > 100_000, "{checked}");
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
