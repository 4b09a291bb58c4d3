//! The customer's sharing policy: what may leave the site, for which provider, in what form.
//!
//! The file is TOML (see the crate README for an example). It is parsed with unknown fields
//! refused and then validated as a whole, so one run reports every problem with where it is.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::fields::FieldPath;
use crate::topic::TopicFilter;

/// The only policy format version this crate understands.
pub const POLICY_VERSION: i64 = 1;

/// Largest rounding grid accepted, in metres (a coarser grid is certainly a typo).
pub const MAX_ROUND_METRES: f64 = 1_000_000.0;

/// Longest aggregation period accepted, in seconds (31 days).
pub const MAX_PERIOD_S: i64 = 31 * 24 * 3600;

/// A parsed and validated sharing policy. The default is the empty policy: nothing leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    sha256: String,
    rules: Vec<ExportRule>,
    kpis: Vec<KpiRule>,
}

/// One `[[export]]` rule: messages on `topics` may go to `provider`, transformed as stated.
///
/// Order of transformations: `drop`, then `round_position`, then `aggregate`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRule {
    /// The provider (operations center) that may receive the messages.
    pub provider: String,
    /// MQTT topic filters the rule covers.
    pub topics: Vec<TopicFilter>,
    /// Why this leaves the site, in the customer's words; carried into the audit log.
    pub purpose: String,
    /// Fields removed before anything else.
    pub drop: Vec<FieldPath>,
    /// Positions coarsened to a grid, if set.
    pub round_position: Option<RoundPosition>,
    /// One summary per period instead of each message, if set.
    pub aggregate: Option<Aggregate>,
}

/// `[export.round_position]`: (lat, lon) pairs rounded to a grid of about `metres`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundPosition {
    /// Grid size in metres (> 0).
    pub metres: f64,
    /// (latitude, longitude) field pairs; `[["lat", "lon"]]` when not given.
    pub fields: Vec<(FieldPath, FieldPath)>,
}

/// `[export.aggregate]`: one summary message per period, per topic and group.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Period length in milliseconds; windows are aligned to multiples of it since the epoch.
    pub period_ms: u64,
    /// Numeric fields summarised as count, mean, min, max, sum.
    pub fields: Vec<FieldPath>,
    /// Fields whose values split the summary into groups.
    pub group_by: Vec<FieldPath>,
}

/// `[[kpis]]`: which service KPIs a provider may read.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiRule {
    /// The provider allowed.
    pub provider: String,
    /// `service.kpi` patterns; `*` matches any run of characters.
    pub allow: Vec<String>,
}

/// One problem in a policy file: where (`export[2].topics[0]`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Location in the file, e.g. `export[2].topics[0]`, or `line 3, column 5` for syntax.
    pub at: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Why a policy could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read sharing policy {path}: {source}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a policy, or breaks the rules; every problem is listed.
    #[error("sharing policy {path} has {} problem(s):\n{}", problems.len(), ProblemList(problems))]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// All problems found.
        problems: Vec<Problem>,
    },
}

impl PolicyError {
    /// The problems found (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            PolicyError::Read { .. } => &[],
            PolicyError::Invalid { problems, .. } => problems,
        }
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: Option<i64>,
    #[serde(default)]
    export: Vec<ExportFile>,
    #[serde(default)]
    kpis: Vec<KpiFile>,
}

// Required fields are defaulted here so that a missing one is listed with the other problems.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportFile {
    #[serde(default)]
    provider: String,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    drop: Vec<String>,
    round_position: Option<RoundFile>,
    aggregate: Option<AggregateFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoundFile {
    metres: Option<f64>,
    fields: Option<Vec<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregateFile {
    period_s: Option<i64>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    group_by: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KpiFile {
    #[serde(default)]
    provider: String,
    #[serde(default)]
    allow: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::deny_all()
    }
}

impl Policy {
    /// The empty policy (no file configured): nothing leaves the site.
    pub fn deny_all() -> Policy {
        Policy { sha256: sha256_hex(b""), rules: Vec::new(), kpis: Vec::new() }
    }

    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
        Policy::parse(&text, path)
    }

    /// Like [`Policy::load`], but a file that does not exist is [`Policy::deny_all`]:
    /// without a policy nothing leaves. Any other read error is still an error.
    pub fn load_or_deny_all(path: &Path) -> Result<Policy, PolicyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Policy::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no sharing policy file: nothing leaves the site");
                Ok(Policy::deny_all())
            }
            Err(source) => Err(PolicyError::Read { path: path.to_owned(), source }),
        }
    }

    /// Parses and validates policy `text`; `path` is only used in the error.
    ///
    /// A text with no rules (empty, or comments only) is the deny-all policy.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let invalid = |problems| PolicyError::Invalid { path: path.to_owned(), problems };
        let file: PolicyFile = toml::from_str(text).map_err(|e| invalid(vec![syntax_problem(text, &e)]))?;
        let mut problems = Vec::new();
        let policy = build(file, &mut problems);
        if problems.is_empty() {
            Ok(Policy { sha256: sha256_hex(text.as_bytes()), ..policy })
        } else {
            Err(invalid(problems))
        }
    }

    /// Hex sha256 of the policy text in force (of the empty text for [`Policy::deny_all`]);
    /// the audit log records it with every batch.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The export rules, in file order; a rule's index here is `rule` in decisions.
    pub fn rules(&self) -> &[ExportRule] {
        &self.rules
    }

    /// The KPI rules, in file order.
    pub fn kpi_rules(&self) -> &[KpiRule] {
        &self.kpis
    }

    /// True when nothing at all may leave.
    pub fn is_deny_all(&self) -> bool {
        self.rules.is_empty() && self.kpis.is_empty()
    }

    /// Providers named by any rule, sorted, without repeats.
    pub fn providers(&self) -> Vec<&str> {
        let set: BTreeSet<&str> = self
            .rules
            .iter()
            .map(|r| r.provider.as_str())
            .chain(self.kpis.iter().map(|k| k.provider.as_str()))
            .collect();
        set.into_iter().collect()
    }

    /// The first rule for `provider` with a filter matching `topic` (see crate docs on overlaps).
    pub fn rule_for(&self, provider: &str, topic: &str) -> Option<(usize, &ExportRule)> {
        self.rules.iter().enumerate().find(|(_, r)| r.provider == provider && r.topics.iter().any(|f| f.matches(topic)))
    }

    /// Whether `provider` may read KPI `kpi` of `service`.
    pub fn kpi_allowed(&self, provider: &str, service: &str, kpi: &str) -> bool {
        let name = format!("{service}.{kpi}");
        self.kpis.iter().filter(|k| k.provider == provider).any(|k| k.allow.iter().any(|p| glob_match(p, &name)))
    }
}

impl ExportRule {
    /// Whether the rule needs to read the payload as a JSON object.
    pub fn needs_fields(&self) -> bool {
        !self.drop.is_empty() || self.round_position.is_some() || self.aggregate.is_some()
    }

    /// Same provider, filters and transformation (the purpose may differ).
    pub(crate) fn same_treatment(&self, other: &ExportRule) -> bool {
        self.provider == other.provider && self.topics == other.topics && treatment_eq(self, other)
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.drop.is_empty() {
            let names: Vec<String> = self.drop.iter().map(ToString::to_string).collect();
            parts.push(format!("drops {}", names.join(", ")));
        }
        if let Some(r) = &self.round_position {
            parts.push(format!("rounds positions to {} m", r.metres));
        }
        if let Some(a) = &self.aggregate {
            parts.push(format!("aggregates every {} s", a.period_ms / 1000));
        }
        if parts.is_empty() {
            "sends messages as they are".into()
        } else {
            parts.join(", ")
        }
    }
}

fn treatment_eq(a: &ExportRule, b: &ExportRule) -> bool {
    let drops = |r: &ExportRule| r.drop.iter().cloned().collect::<BTreeSet<_>>();
    drops(a) == drops(b) && a.round_position == b.round_position && a.aggregate == b.aggregate
}

fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let at = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}")
        }
        None => "file".into(),
    };
    Problem { at, message: e.message().to_owned() }
}

fn build(file: PolicyFile, problems: &mut Vec<Problem>) -> Policy {
    let mut push = |at: String, message: String| problems.push(Problem { at, message });
    match file.version {
        Some(POLICY_VERSION) => {}
        Some(v) => {
            push("version".into(), format!("unknown version {v}; this agent understands version = {POLICY_VERSION}"))
        }
        None if !file.export.is_empty() || !file.kpis.is_empty() => {
            push("version".into(), format!("missing; write `version = {POLICY_VERSION}` at the top"))
        }
        None => {}
    }

    let mut rules = Vec::new();
    for (i, rule) in file.export.into_iter().enumerate() {
        rules.push(build_rule(&format!("export[{i}]"), rule, &mut push));
    }
    check_overlaps(&rules, &mut push);

    let mut kpis = Vec::new();
    let mut kpi_providers = BTreeSet::new();
    for (i, k) in file.kpis.into_iter().enumerate() {
        let at = format!("kpis[{i}]");
        check_provider(&format!("{at}.provider"), &k.provider, &mut push);
        if !k.provider.is_empty() && !kpi_providers.insert(k.provider.clone()) {
            push(
                format!("{at}.provider"),
                format!("a second [[kpis]] for provider `{}`; put all its patterns in one rule", k.provider),
            );
        }
        if k.allow.is_empty() {
            push(format!("{at}.allow"), "empty; list `service.kpi` patterns, e.g. \"weight-loading.*\"".into());
        }
        let mut seen = BTreeSet::new();
        for (j, pattern) in k.allow.iter().enumerate() {
            let at = format!("{at}.allow[{j}]");
            if let Err(m) = check_kpi_pattern(pattern) {
                push(at.clone(), m);
            }
            if !seen.insert(pattern) {
                push(at, format!("`{pattern}` is listed twice"));
            }
        }
        kpis.push(KpiRule { provider: k.provider, allow: k.allow });
    }
    Policy { sha256: String::new(), rules, kpis }
}

fn check_provider(at: &str, provider: &str, push: &mut impl FnMut(String, String)) {
    if provider.trim().is_empty() {
        push(at.into(), "missing or empty; name the provider that may receive the data".into());
    } else if provider.chars().any(|c| c.is_whitespace() || c.is_control()) {
        push(at.into(), format!("`{provider}` contains whitespace or control characters"));
    }
}

fn build_rule(at: &str, rule: ExportFile, push: &mut impl FnMut(String, String)) -> ExportRule {
    check_provider(&format!("{at}.provider"), &rule.provider, push);
    if rule.purpose.trim().is_empty() {
        push(
            format!("{at}.purpose"),
            "missing or empty; say why this data leaves the site (shown in the audit)".into(),
        );
    }

    let mut topics = Vec::new();
    if rule.topics.is_empty() {
        push(format!("{at}.topics"), "empty; name at least one MQTT topic filter".into());
    }
    for (j, t) in rule.topics.iter().enumerate() {
        match TopicFilter::parse(t) {
            Ok(filter) if topics.contains(&filter) => {
                push(format!("{at}.topics[{j}]"), format!("`{t}` is listed twice"))
            }
            Ok(filter) => topics.push(filter),
            Err(m) => push(format!("{at}.topics[{j}]"), format!("`{t}`: {m}")),
        }
    }

    let drop = paths(&format!("{at}.drop"), &rule.drop, push);

    let round_position = rule.round_position.map(|r| {
        let rat = format!("{at}.round_position");
        let metres = match r.metres {
            None => {
                push(format!("{rat}.metres"), "missing; give the grid size in metres".into());
                f64::NAN
            }
            Some(m) if !(m > 0.0 && m <= MAX_ROUND_METRES) => {
                push(
                    format!("{rat}.metres"),
                    format!("{m} is not a grid size; use a number of metres in (0, {MAX_ROUND_METRES}]"),
                );
                m
            }
            Some(m) => m,
        };
        let raw = r.fields.unwrap_or_else(|| vec![vec!["lat".into(), "lon".into()]]);
        if raw.is_empty() {
            push(
                format!("{rat}.fields"),
                "empty; leave it out for [[\"lat\", \"lon\"]] or list (lat, lon) pairs".into(),
            );
        }
        let mut fields = Vec::new();
        for (j, pair) in raw.iter().enumerate() {
            let pat = format!("{rat}.fields[{j}]");
            if pair.len() != 2 {
                push(pat, format!("has {} entries; write a [latitude, longitude] pair", pair.len()));
                continue;
            }
            let lat = FieldPath::parse(&pair[0]).map_err(|m| push(format!("{pat}[0]"), m));
            let lon = FieldPath::parse(&pair[1]).map_err(|m| push(format!("{pat}[1]"), m));
            if let (Ok(lat), Ok(lon)) = (lat, lon) {
                if lat == lon {
                    push(pat.clone(), format!("latitude and longitude are the same field `{lat}`"));
                }
                for (k, p) in [(0, &lat), (1, &lon)] {
                    if drop.contains(p) {
                        push(format!("{pat}[{k}]"), format!("`{p}` is also in drop; it is removed before rounding"));
                    }
                }
                fields.push((lat, lon));
            }
        }
        RoundPosition { metres, fields }
    });

    let aggregate = rule.aggregate.map(|a| {
        let aat = format!("{at}.aggregate");
        let period_ms = match a.period_s {
            None => {
                push(format!("{aat}.period_s"), "missing; give the period in seconds".into());
                0
            }
            Some(p) if !(1..=MAX_PERIOD_S).contains(&p) => {
                push(format!("{aat}.period_s"), format!("{p} is not a period; use 1 to {MAX_PERIOD_S} seconds"));
                0
            }
            Some(p) => p.unsigned_abs() * 1000,
        };
        let fields = paths(&format!("{aat}.fields"), &a.fields, push);
        let group_by = paths(&format!("{aat}.group_by"), &a.group_by, push);
        for (name, list) in [("fields", &fields), ("group_by", &group_by)] {
            for p in list.iter().filter(|p| drop.contains(p)) {
                push(format!("{aat}.{name}"), format!("`{p}` is also in drop; it is removed before aggregation"));
            }
        }
        for p in group_by.iter().filter(|p| fields.contains(p)) {
            push(format!("{aat}.group_by"), format!("`{p}` is both summarised and a group key"));
        }
        Aggregate { period_ms, fields, group_by }
    });

    ExportRule { provider: rule.provider, topics, purpose: rule.purpose, drop, round_position, aggregate }
}

fn paths(at: &str, raw: &[String], push: &mut impl FnMut(String, String)) -> Vec<FieldPath> {
    let mut out = Vec::new();
    for (j, p) in raw.iter().enumerate() {
        match FieldPath::parse(p) {
            Ok(path) if out.contains(&path) => push(format!("{at}[{j}]"), format!("`{p}` is listed twice")),
            Ok(path) => out.push(path),
            Err(m) => push(format!("{at}[{j}]"), m),
        }
    }
    out
}

/// Two rules for one provider that could both claim a message must treat it the same way;
/// otherwise which one applies would silently decide what leaves (say raw vs aggregated).
fn check_overlaps(rules: &[ExportRule], push: &mut impl FnMut(String, String)) {
    for (i, a) in rules.iter().enumerate() {
        for (k, b) in rules.iter().enumerate().skip(i + 1) {
            if a.provider != b.provider || a.provider.is_empty() {
                continue;
            }
            for (ai, fa) in a.topics.iter().enumerate() {
                for (bi, fb) in b.topics.iter().enumerate() {
                    let Some(example) = fa.overlap(fb) else { continue };
                    let here = format!("export[{k}].topics[{bi}]");
                    if !treatment_eq(a, b) {
                        push(
                            here,
                            format!(
                                "`{fb}` overlaps export[{i}].topics[{ai}] `{fa}` for provider `{}` (both match `{example}`), \
                                 but export[{i}] {} and export[{k}] {}; make the filters disjoint or give both rules \
                                 the same drop, round_position and aggregate",
                                a.provider,
                                a.describe(),
                                b.describe()
                            ),
                        );
                    } else if fa == fb {
                        push(here, format!("duplicates export[{i}].topics[{ai}] `{fa}` for provider `{}`", a.provider));
                    }
                }
            }
        }
    }
}

fn check_kpi_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("empty pattern".into());
    }
    if !pattern.contains('.') {
        return Err(format!("`{pattern}` is not `service.kpi` (e.g. \"weight-loading.*\")"));
    }
    if let Some(c) = pattern.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.*".contains(*c))) {
        return Err(format!("`{pattern}` contains `{c}`; use letters, digits, `-`, `_`, `.` and `*`"));
    }
    Ok(())
}

/// `*` matches any run of characters (dots included); everything else literally.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, Path::new("sharing.toml"))
    }

    fn ats(text: &str) -> Vec<String> {
        parse(text).unwrap_err().problems().iter().map(|p| p.at.clone()).collect()
    }

    #[test]
    fn empty_text_is_deny_all() {
        let p = parse("# nothing shared\n").unwrap();
        assert!(p.is_deny_all());
        assert!(p.rule_for("acme", "svc/a").is_none());
        assert_eq!(Policy::deny_all().sha256(), sha256_hex(b""));
    }

    #[test]
    fn missing_file_is_deny_all_but_a_bad_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("outpost-sharing-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Policy::load_or_deny_all(&dir.join("none.toml")).unwrap().is_deny_all());
        assert!(matches!(Policy::load(&dir.join("none.toml")), Err(PolicyError::Read { .. })));
        std::fs::write(dir.join("bad.toml"), "version = 7\n").unwrap();
        assert_eq!(Policy::load_or_deny_all(&dir.join("bad.toml")).unwrap_err().problems()[0].at, "version");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
version = 1
[[export]]
provider = "acme-equipment"
topics = ["svc/weight-loading/+/shift", "svc/leak-detection/+/alarm"]
purpose = "loading KPIs for the monthly service review"
drop = ["operator", "truck.driver_id"]
[export.round_position]
metres = 100
[export.aggregate]
period_s = 900
fields = ["payload_t", "cycle_s"]
group_by = ["site"]
[[kpis]]
provider = "acme-equipment"
allow = ["weight-loading.*", "positioning.fix_rate"]
"#;
        let p = parse(text).unwrap();
        assert_eq!(p.sha256(), sha256_hex(text.as_bytes()));
        let rule = &p.rules()[0];
        assert_eq!(rule.round_position.as_ref().unwrap().metres, 100.0);
        assert_eq!(rule.round_position.as_ref().unwrap().fields[0].0.to_string(), "lat");
        assert_eq!(rule.aggregate.as_ref().unwrap().period_ms, 900_000);
        assert_eq!(p.rule_for("acme-equipment", "svc/leak-detection/n1/alarm").unwrap().0, 0);
        assert!(p.rule_for("other", "svc/leak-detection/n1/alarm").is_none());
        assert_eq!(p.providers(), ["acme-equipment"]);
    }

    #[test]
    fn every_problem_is_listed_with_its_place() {
        let text = r#"
version = 2
[[export]]
provider = ""
topics = ["svc/a/#/b", "ok/+"]
drop = ["a..b"]
[export.round_position]
metres = nan
[export.aggregate]
period_s = 0
[[export]]
provider = "acme"
topics = []
purpose = "x"
[export.round_position]
metres = -5
fields = [["lat"]]
[[kpis]]
provider = "acme"
allow = ["no_dot", "a.b c"]
"#;
        let got = ats(text);
        for want in [
            "version",
            "export[0].provider",
            "export[0].purpose",
            "export[0].topics[0]",
            "export[0].drop[0]",
            "export[0].round_position.metres",
            "export[0].aggregate.period_s",
            "export[1].topics",
            "export[1].round_position.metres",
            "export[1].round_position.fields[0]",
            "kpis[0].allow[0]",
            "kpis[0].allow[1]",
        ] {
            assert!(got.iter().any(|a| a == want), "{want} missing from {got:?}");
        }
        assert_eq!(got.len(), 12, "{got:?}");
        let message = parse(text).unwrap_err().to_string();
        assert!(message.starts_with("sharing policy sharing.toml has 12 problem(s):"), "{message}");
        assert!(message.contains("export[0].topics[0]: `svc/a/#/b`: `#` must be a whole level and the last one"));
    }

    #[test]
    fn unknown_fields_and_syntax_name_the_line() {
        let e = parse("version = 1\n[[export]]\nprovider = \"a\"\ntopic = [\"x\"]\n").unwrap_err();
        let p = &e.problems()[0];
        assert_eq!(p.at, "line 4, column 1");
        assert!(p.message.contains("unknown field `topic`"), "{}", p.message);
        let e = parse("version = \n").unwrap_err();
        assert!(e.problems()[0].at.starts_with("line 1"), "{e}");
    }

    #[test]
    fn missing_version_with_rules() {
        let got = ats("[[kpis]]\nprovider = \"a\"\nallow = [\"x.*\"]\n");
        assert_eq!(got, ["version"]);
    }

    const RAW_AND_AGG: &str = r#"
version = 1
[[export]]
provider = "acme"
topics = ["svc/weight-loading/#"]
purpose = "raw"
[[export]]
provider = "acme"
topics = ["svc/weight-loading/+/shift"]
purpose = "aggregated"
[export.aggregate]
period_s = 60
"#;

    #[test]
    fn raw_and_aggregated_for_one_topic_is_a_conflict() {
        let e = parse(RAW_AND_AGG).unwrap_err();
        assert_eq!(e.problems().len(), 1, "{e}");
        let p = &e.problems()[0];
        assert_eq!(p.at, "export[1].topics[0]");
        assert!(p.message.contains("both match `svc/weight-loading/x/shift`"), "{}", p.message);
        assert!(p.message.contains("export[0] sends messages as they are and export[1] aggregates every 60 s"));
        // The same filters for different providers are fine.
        assert!(parse(&RAW_AND_AGG.replacen("provider = \"acme\"", "provider = \"other\"", 1)).is_ok());
    }

    #[test]
    fn duplicates_are_reported() {
        let text = r#"
version = 1
[[export]]
provider = "acme"
topics = ["a/b", "a/b"]
purpose = "p"
drop = ["x", "x"]
[[export]]
provider = "acme"
topics = ["a/b"]
purpose = "p"
[[kpis]]
provider = "acme"
allow = ["a.*"]
[[kpis]]
provider = "acme"
allow = ["b.*", "b.*"]
"#;
        let got = ats(text);
        assert_eq!(
            got,
            ["export[0].topics[1]", "export[0].drop[1]", "export[1].topics[0]", "kpis[1].provider", "kpis[1].allow[1]"]
        );
    }

    #[test]
    fn overlap_with_same_treatment_is_allowed() {
        let text = r#"
version = 1
[[export]]
provider = "acme"
topics = ["svc/#"]
purpose = "p"
drop = ["a", "b"]
[[export]]
provider = "acme"
topics = ["svc/x/+"]
purpose = "q"
drop = ["b", "a"]
"#;
        assert!(parse(text).is_ok());
    }

    #[test]
    fn dropped_field_used_later_is_a_problem() {
        let text = r#"
version = 1
[[export]]
provider = "acme"
topics = ["a"]
purpose = "p"
drop = ["lat", "site", "t"]
[export.round_position]
metres = 10
[export.aggregate]
period_s = 60
fields = ["t"]
group_by = ["site"]
"#;
        let got = ats(text);
        assert_eq!(
            got,
            ["export[0].round_position.fields[0][0]", "export[0].aggregate.fields", "export[0].aggregate.group_by"]
        );
    }

    #[test]
    fn kpi_wildcards() {
        let p = parse("version = 1\n[[kpis]]\nprovider = \"acme\"\nallow = [\"weight-loading.*\", \"positioning.fix_rate\", \"*.uptime\"]\n").unwrap();
        assert!(p.kpi_allowed("acme", "weight-loading", "payload_t"));
        assert!(p.kpi_allowed("acme", "positioning", "fix_rate"));
        assert!(!p.kpi_allowed("acme", "positioning", "fix_rate_x"));
        assert!(!p.kpi_allowed("acme", "positioning", "satellites"));
        assert!(p.kpi_allowed("acme", "leak-detection", "uptime"));
        assert!(!p.kpi_allowed("other", "weight-loading", "payload_t"));
        assert!(!Policy::deny_all().kpi_allowed("acme", "weight-loading", "payload_t"));
    }

    #[test]
    fn glob() {
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a.*", "a.b.c"));
        assert!(!glob_match("a*c", "abcd"));
        assert!(glob_match("*b*", "abc"));
        assert!(!glob_match("", "a"));
    }
}
