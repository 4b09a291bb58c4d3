//! Property tests for `service.toml`, which arrives inside packages from
//! providers: whatever the text, parsing never panics and a refusal names
//! the manifest; a valid manifest with a line removed or a value replaced is
//! either still valid or refused that way.

use outpost::manifest::{Manifest, ManifestError};
use proptest::prelude::*;
use std::path::Path;

const VALID: &str = r#"[service]
name = "positioning"
version = "1.2.0"
provider = "acme"
world = "outpost:service@1.0.0"
[bus]
subscribe = ["site/+/+/gnss/nmea", "site/+/+/gnss/ubx"]
publish = ["svc/positioning/+/fix"]
[scale]
instances = 2
shard_by = 2
[limits]
memory_mib = 16
call_deadline_ms = 50
[config]
min_sats = 4
[kpis.fix_rate]
unit = "Hz"
better = "higher"
"#;

fn path() -> &'static Path {
    Path::new("pkg/service.toml")
}

fn check(text: &str) -> Result<(), TestCaseError> {
    match Manifest::parse(text, path()) {
        Ok(m) => {
            prop_assert!(!m.service.name.is_empty());
            prop_assert!(m.scale.instances >= 1);
        }
        Err(e) => {
            prop_assert!(e.to_string().contains("pkg/service.toml"), "error does not name the manifest: {}", e);
            if let ManifestError::Invalid { problems, .. } = &e {
                prop_assert!(!problems.is_empty());
            }
        }
    }
    Ok(())
}

#[test]
fn the_sample_is_valid() {
    Manifest::parse(VALID, path()).expect("valid");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_parsed_or_refused_by_name(text in "\\PC{0,400}") {
        check(&text)?;
    }

    #[test]
    fn toml_shaped_text_is_parsed_or_refused_by_name(
        lines in proptest::collection::vec("(\\[[a-z.]{0,12}\\]|[a-z_]{1,10} = (\"[ -~]{0,20}\"|[0-9-]{1,12}|\\[\"[a-z/+#]{0,12}\"\\]|true))", 0..30)
    ) {
        check(&lines.join("\n"))?;
    }

    #[test]
    fn a_line_removed_is_valid_or_refused_by_name(skip in 0usize..25) {
        let text: Vec<&str> = VALID.lines().enumerate().filter(|(i, _)| *i != skip).map(|(_, l)| l).collect();
        check(&text.join("\n"))?;
    }

    #[test]
    fn a_value_replaced_is_valid_or_refused_by_name(
        line in 0usize..25,
        value in prop_oneof![
            Just("\"\"".to_string()),
            Just("-1".to_string()),
            Just("18446744073709551616".to_string()),
            Just("[\"#\", \"+/#/x\", \"\"]".to_string()),
            Just("0".to_string()),
            Just("4294967295".to_string()),
            "\"[ -~]{0,30}\"",
            "[0-9]{1,25}",
        ],
    ) {
        let text: Vec<String> = VALID
            .lines()
            .enumerate()
            .map(|(i, l)| match l.split_once(" = ") {
                Some((key, _)) if i == line => format!("{key} = {value}"),
                _ => l.to_string(),
            })
            .collect();
        check(&text.join("\n"))?;
    }
}
