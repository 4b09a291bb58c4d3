//! MQTT topic filters (`+` one level, `#` the rest) as the policy names them.

use std::fmt;

/// A validated MQTT topic filter, e.g. `svc/weight-loading/+/shift` or `svc/leak-detection/#`.
///
/// Matching follows MQTT 3.1.1 §4.7: `+` matches exactly one level (which may be empty),
/// `#` (only as the last level) matches the parent level and any number of levels below it,
/// and a wildcard in the first level never matches a topic starting with `$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Checks `filter` and keeps it; the error says what is wrong with it.
    pub fn parse(filter: &str) -> Result<TopicFilter, String> {
        if filter.is_empty() {
            return Err("empty topic filter".into());
        }
        if filter.len() > 65_535 {
            return Err("topic filter longer than 65535 bytes".into());
        }
        if filter.contains('\0') {
            return Err("topic filter contains a NUL character".into());
        }
        let levels: Vec<&str> = filter.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
                return Err(format!("`#` must be a whole level and the last one (level {})", i + 1));
            }
            if level.contains('+') && *level != "+" {
                return Err(format!("`+` must be a whole level (level {})", i + 1));
            }
        }
        Ok(TopicFilter(filter.to_owned()))
    }

    /// The filter as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the concrete `topic` matches this filter.
    pub fn matches(&self, topic: &str) -> bool {
        let mut filter = self.0.split('/');
        let mut levels = topic.split('/');
        let mut first = true;
        loop {
            match (filter.next(), levels.next()) {
                (Some("#"), level) => return !(first && level.is_some_and(|l| l.starts_with('$'))),
                (Some("+"), Some(level)) => {
                    if first && level.starts_with('$') {
                        return false;
                    }
                }
                (Some(f), Some(level)) if f == level => {}
                (None, None) => return true,
                _ => return false,
            }
            first = false;
        }
    }

    /// A concrete topic matched by both filters, if there is one.
    ///
    /// Used by policy validation to find rules that would both claim a message.
    pub fn overlap(&self, other: &TopicFilter) -> Option<String> {
        let a: Vec<&str> = self.0.split('/').collect();
        let b: Vec<&str> = other.0.split('/').collect();
        let levels = overlap_levels(&a, &b)?;
        let example = levels.join("/");
        // The `$` rule can make a structural overlap empty; confirm on the example.
        (self.matches(&example) && other.matches(&example)).then_some(example)
    }
}

/// Levels of a topic matched by both filter suffixes (`+` shown as `x`).
fn overlap_levels(a: &[&str], b: &[&str]) -> Option<Vec<String>> {
    match (a.first(), b.first()) {
        (None, None) => Some(Vec::new()),
        (Some(&"#"), _) => Some(concrete(b)),
        (_, Some(&"#")) => Some(concrete(a)),
        (None, Some(_)) | (Some(_), None) => None,
        (Some(x), Some(y)) => {
            let level = match (*x, *y) {
                ("+", "+") => "x",
                ("+", lit) | (lit, "+") => lit,
                (l, r) if l == r => l,
                _ => return None,
            };
            let mut rest = overlap_levels(&a[1..], &b[1..])?;
            rest.insert(0, level.to_owned());
            Some(rest)
        }
    }
}

/// One concrete topic matched by a filter suffix: `+` becomes `x`, `#` matches zero levels.
fn concrete(filter: &[&str]) -> Vec<String> {
    filter.iter().filter(|l| **l != "#").map(|l| if *l == "+" { "x".to_owned() } else { (*l).to_owned() }).collect()
}

/// Whether `topic` is a valid concrete topic name (no wildcards, not empty, no NUL).
pub(crate) fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#', '\0'])
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn plus_matches_one_level() {
        let filter = f("svc/weight-loading/+/shift");
        assert!(filter.matches("svc/weight-loading/site/shift"));
        assert!(filter.matches("svc/weight-loading//shift"));
        assert!(!filter.matches("svc/weight-loading/site/x/shift"));
        assert!(!filter.matches("svc/weight-loading/shift"));
        assert!(!filter.matches("svc/weight-loading/site/shift/extra"));
    }

    #[test]
    fn hash_matches_parent_and_below() {
        let filter = f("svc/leak-detection/#");
        assert!(filter.matches("svc/leak-detection"));
        assert!(filter.matches("svc/leak-detection/net1/alarm"));
        assert!(!filter.matches("svc/leak-detectionX/net1"));
        assert!(!filter.matches("svc"));
        assert!(f("#").matches("a/b/c"));
        assert!(!f("#").matches("$SYS/broker"));
        assert!(!f("+/broker").matches("$SYS/broker"));
        assert!(f("$SYS/#").matches("$SYS/broker"));
    }

    #[test]
    fn literal_matches_exactly() {
        assert!(f("a/b").matches("a/b"));
        assert!(!f("a/b").matches("a/b/"));
        assert!(!f("a/b").matches("a"));
    }

    #[test]
    fn bad_filters_are_rejected_with_reason() {
        for bad in ["", "a/#/b", "a/b#", "a+/b", "a/+x", "a\0b"] {
            assert!(TopicFilter::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TopicFilter::parse("a/#/b").unwrap_err().contains("last"));
    }

    #[test]
    fn overlap_finds_a_common_topic() {
        assert_eq!(f("svc/+/a/shift").overlap(&f("svc/w/+/shift")), Some("svc/w/a/shift".into()));
        assert_eq!(f("svc/#").overlap(&f("svc/+/fix")), Some("svc/x/fix".into()));
        assert_eq!(f("svc/a/#").overlap(&f("svc/a")), Some("svc/a".into()));
        assert_eq!(f("svc/a/+").overlap(&f("svc/b/+")), None);
        assert_eq!(f("a/+").overlap(&f("a/+/c")), None);
        assert_eq!(f("$SYS/x").overlap(&f("+/x")), None);
    }
}
