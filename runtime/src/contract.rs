//! Typed contracts between services: a manifest's `[contracts]` declares
//! the JSON Schema of what it publishes on a topic and what it relies on in
//! what it subscribes to. A producer satisfies a consumer when everything
//! the consumer's `requires` asks for is guaranteed by the producer's
//! schema. The control plane refuses a deploy that breaks a running
//! consumer (see [`check_deploy`]).
//!
//! The schema language is the structural subset of JSON Schema that says
//! what a payload holds: `type`, `properties`, `required`, `items`, `enum`,
//! `const` (other keywords such as `description` or `minimum` are allowed
//! and ignored here). The rules, for a consumer's `requires` C and a
//! producer's `schema` P at the same place in the document:
//!
//! - a property in C's `required` must be in P's `required`;
//! - a property C describes (required or not) and P describes is checked
//!   recursively, so an optional field the consumer reads keeps its type;
//! - where C has a `type`, P must have one and each of P's types must be
//!   one of C's (`integer` satisfies `number`);
//! - where C has `enum` or `const`, P must have one, and every value P may
//!   send must be one C accepts;
//! - where C describes `items`, P's `items` must satisfy them.

use crate::manifest::Manifest;
use serde_json::{Map, Value};
use std::fmt;

/// The JSON Schema type names.
pub const TYPES: [&str; 7] = ["object", "array", "string", "number", "integer", "boolean", "null"];

/// One way a producer's schema fails a consumer's expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Where in the payload: `speed`, `fix.lat`, `assets[].id`; empty for the document.
    pub path: String,
    pub kind: MismatchKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MismatchKind {
    /// The consumer requires the property; the producer does not list it as required.
    NotGuaranteed { wants: String },
    /// The consumer expects these types; the producer declares none.
    TypeUnknown { wants: String },
    /// The producer may send types the consumer does not accept.
    Type { wants: String, has: String },
    /// The consumer accepts only these values; the producer does not bound its values.
    ValuesUnbounded { wants: String },
    /// The producer may send values the consumer does not accept.
    Values { wants: String, extra: String },
}

impl Mismatch {
    /// One sentence naming both sides: `consumer requires property `speed`
    /// (number) but producer does not guarantee it`.
    pub fn describe(&self, consumer: &str, producer: &str) -> String {
        let at = if self.path.is_empty() { "the payload".to_owned() } else { format!("`{}`", self.path) };
        match &self.kind {
            MismatchKind::NotGuaranteed { wants } => {
                format!("{consumer} requires property `{}` ({wants}) but {producer} does not guarantee it", self.path)
            }
            MismatchKind::TypeUnknown { wants } => {
                format!("{consumer} requires {at} to be {wants} but {producer} does not declare its type")
            }
            MismatchKind::Type { wants, has } => {
                format!("{consumer} requires {at} to be {wants} but {producer} declares it {has}")
            }
            MismatchKind::ValuesUnbounded { wants } => {
                format!("{consumer} accepts {at} only as one of {wants} but {producer} does not bound its values")
            }
            MismatchKind::Values { wants, extra } => {
                format!("{consumer} accepts {at} only as one of {wants} but {producer} may send {extra}")
            }
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("the consumer", "the producer"))
    }
}

/// Problems with a schema's shape (not JSON, not an object, a `type` that
/// is no JSON Schema type, `required` not a list of names...), each with
/// its path; empty when it is usable.
pub fn schema_problems(text: &str) -> Vec<String> {
    match serde_json::from_str::<Value>(text) {
        Err(e) => vec![format!("is not JSON: {e}")],
        Ok(v) => {
            let mut p = Vec::new();
            shape(&v, "", &mut p);
            p
        }
    }
}

fn shape(schema: &Value, path: &str, p: &mut Vec<String>) {
    let here = if path.is_empty() { "the schema".to_owned() } else { format!("`{path}`") };
    let Some(o) = schema.as_object() else {
        p.push(format!("{here} is not a JSON object"));
        return;
    };
    if let Some(t) = o.get("type") {
        let names: Option<Vec<&str>> = match t {
            Value::String(s) => Some(vec![s.as_str()]),
            Value::Array(a) => a.iter().map(Value::as_str).collect(),
            _ => None,
        };
        match names {
            None => p.push(format!("{here}: `type` must be a type name or a list of them")),
            Some(n) => {
                for bad in n.iter().filter(|n| !TYPES.contains(n)) {
                    p.push(format!("{here}: `type` '{bad}' is not one of {}", TYPES.join(", ")));
                }
            }
        }
    }
    if let Some(r) = o.get("required") {
        if !r.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            p.push(format!("{here}: `required` must be a list of property names"));
        }
    }
    if let Some(e) = o.get("enum") {
        if !e.is_array() {
            p.push(format!("{here}: `enum` must be a list of values"));
        }
    }
    match o.get("properties") {
        None => {}
        Some(Value::Object(props)) => {
            for (name, sub) in props {
                shape(sub, &join(path, name), p);
            }
        }
        Some(_) => p.push(format!("{here}: `properties` must be an object")),
    }
    if let Some(items) = o.get("items") {
        shape(items, &format!("{}[]", path), p);
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn types(schema: &Map<String, Value>) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn type_text(t: &[&str]) -> String {
    t.join(" or ")
}

fn allowed_values(schema: &Map<String, Value>) -> Option<Vec<&Value>> {
    if let Some(c) = schema.get("const") {
        return Some(vec![c]);
    }
    schema.get("enum").and_then(Value::as_array).map(|a| a.iter().collect())
}

fn values_text(v: &[&Value]) -> String {
    v.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
}

fn required(schema: &Map<String, Value>) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Does `producer` (a publish `schema`) guarantee what `consumer` (a
/// subscribe `requires`) relies on? Every mismatch, in document order.
pub fn satisfies(producer: &Value, consumer: &Value) -> Vec<Mismatch> {
    let mut out = Vec::new();
    compare(producer, consumer, "", &mut out);
    out
}

fn compare(producer: &Value, consumer: &Value, path: &str, out: &mut Vec<Mismatch>) {
    let empty = Map::new();
    let c = consumer.as_object().unwrap_or(&empty);
    let p = producer.as_object().unwrap_or(&empty);
    let mismatch = |kind| Mismatch { path: path.to_owned(), kind };

    if let Some(wants) = types(c) {
        match types(p) {
            None => out.push(mismatch(MismatchKind::TypeUnknown { wants: type_text(&wants) })),
            Some(has) => {
                let fits = |t: &&str| wants.contains(t) || (*t == "integer" && wants.contains(&"number"));
                if !has.iter().all(fits) {
                    out.push(mismatch(MismatchKind::Type { wants: type_text(&wants), has: type_text(&has) }));
                }
            }
        }
    }
    if let Some(wants) = allowed_values(c) {
        match allowed_values(p) {
            None => out.push(mismatch(MismatchKind::ValuesUnbounded { wants: values_text(&wants) })),
            Some(has) => {
                let extra: Vec<&Value> = has.into_iter().filter(|v| !wants.contains(v)).collect();
                if !extra.is_empty() {
                    out.push(mismatch(MismatchKind::Values { wants: values_text(&wants), extra: values_text(&extra) }));
                }
            }
        }
    }

    let c_props = c.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let p_props = p.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let p_required = required(p);
    let c_required = required(c);
    // Required names first (as the consumer lists them), then the optional ones it describes.
    let mut names: Vec<&str> = c_required.clone();
    names.extend(c_props.keys().map(String::as_str).filter(|n| !c_required.contains(n)));
    for name in names {
        let sub_path = join(path, name);
        let c_sub = c_props.get(name);
        if c_required.contains(&name) && !p_required.contains(&name) {
            let wants = c_sub
                .and_then(Value::as_object)
                .and_then(types)
                .map(|t| type_text(&t))
                .unwrap_or_else(|| "any type".into());
            out.push(Mismatch { path: sub_path, kind: MismatchKind::NotGuaranteed { wants } });
            continue;
        }
        let Some(c_sub) = c_sub else { continue };
        match p_props.get(name) {
            Some(p_sub) => compare(p_sub, c_sub, &sub_path, out),
            // Required but undescribed: the producer promises presence, not shape.
            None if c_required.contains(&name) => compare(&Value::Object(Map::new()), c_sub, &sub_path, out),
            // Optional and undescribed: the consumer copes with its absence.
            None => {}
        }
    }

    if let Some(c_items) = c.get("items") {
        let p_items = p.get("items").cloned().unwrap_or_else(|| Value::Object(Map::new()));
        compare(&p_items, c_items, &format!("{path}[]"), out);
    }
}

/// Problems of `value` against `schema` (the same subset: `type`,
/// `required`, `properties`, `items`, `enum`, `const`), each with its path.
/// Used to check declared schemas against payloads services really send.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check_value(schema, value, "", &mut out);
    out
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check_value(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let Some(s) = schema.as_object() else { return };
    let at = if path.is_empty() { "payload".to_owned() } else { format!("`{path}`") };
    if let Some(t) = types(s) {
        let is = type_of(value);
        let whole_float = value.as_f64().is_some_and(|f| f.fract() == 0.0);
        let ok = t.contains(&is)
            || (is == "integer" && t.contains(&"number"))
            || (is == "number" && whole_float && t.contains(&"integer"));
        if !ok {
            out.push(format!("{at} is {is} ({value}), schema says {}", type_text(&t)));
            return;
        }
    }
    if let Some(allowed) = allowed_values(s) {
        if !allowed.contains(&value) {
            out.push(format!("{at} is {value}, schema allows only {}", values_text(&allowed)));
        }
    }
    if let Value::Object(fields) = value {
        for name in required(s) {
            if !fields.contains_key(name) {
                out.push(format!("{at} lacks required property `{name}`"));
            }
        }
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                if let Some(v) = fields.get(name) {
                    check_value(sub, v, &join(path, name), out);
                }
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, s.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check_value(item_schema, v, &format!("{path}[{i}]"), out);
        }
    }
}

/// Every contract `new` would break against `running` (the other services
/// on the gateway), as one sentence each naming topic, both services and
/// the mismatch: its publishes against their `requires`, and its
/// `requires` against their publishes. A service is never checked against
/// another version of itself (`running` entries with its name are skipped).
pub fn check_deploy(new: &Manifest, running: &[Manifest]) -> Vec<String> {
    let mut out = Vec::new();
    for other in running.iter().filter(|m| m.service.name != new.service.name) {
        out.extend(check_pair(new, other));
        out.extend(check_pair(other, new));
    }
    out
}

/// `producer`'s publishes against `consumer`'s subscribe contracts.
pub fn check_pair(producer: &Manifest, consumer: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    let (p_id, c_id) = (producer.id(), consumer.id());
    for (c_topic, expect) in &consumer.contracts.subscribe {
        let Ok(requires) = serde_json::from_str::<Value>(&expect.requires) else { continue };
        // The producer's contracts on topics the consumer's contract covers.
        let mut covered = false;
        for (p_topic, offer) in &producer.contracts.publish {
            if !crate::topic::overlap(p_topic, c_topic) {
                continue;
            }
            covered = true;
            let Ok(schema) = serde_json::from_str::<Value>(&offer.schema) else { continue };
            let producer_label = format!("{p_id} (schema {} on {p_topic})", offer.version);
            for m in satisfies(&schema, &requires) {
                out.push(format!("{c_topic}: {}", m.describe(&c_id, &producer_label)));
            }
        }
        // Publishing on the consumer's topic without any declared schema guarantees nothing.
        if !covered {
            for f in producer.bus.publish.iter().filter(|f| crate::topic::overlap(f, c_topic)) {
                out.push(format!(
                    "{c_topic}: {c_id} declares what it requires of it but {p_id} publishes to {f} without a contract \
                     (add [contracts.publish.\"{f}\"] with its schema)"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIX_REQUIRES: &str = r#"{
        "type": "object",
        "required": ["mode"],
        "properties": {
            "class": {"const": "TPV"},
            "mode": {"type": "integer", "enum": [0, 1, 2, 3]},
            "lat": {"type": "number"},
            "speed": {"type": "number"}
        }
    }"#;

    fn fix_schema() -> Value {
        json!({
            "type": "object",
            "required": ["class", "mode"],
            "properties": {
                "class": {"type": "string", "const": "TPV"},
                "mode": {"type": "integer", "enum": [1, 2, 3]},
                "lat": {"type": "number"},
                "speed": {"type": "number"},
                "device": {"type": "string"}
            }
        })
    }

    fn requires() -> Value {
        serde_json::from_str(FIX_REQUIRES).expect("json")
    }

    fn manifest(name: &str, version: &str, publish: &str, subscribe: &str, contracts: &str) -> Manifest {
        let text = format!(
            "[service]\nname = \"{name}\"\nversion = \"{version}\"\nprovider = \"p\"\nworld = \"outpost:service@1.0.0\"\n\
             [bus]\nsubscribe = [\"{subscribe}\"]\npublish = [\"{publish}\"]\n{contracts}"
        );
        Manifest::parse(&text, std::path::Path::new("service.toml")).expect("valid manifest")
    }

    #[test]
    fn a_deploy_is_checked_both_ways_against_the_running_services() {
        let schema = fix_schema().to_string();
        let producer = |version: &str, schema: &str| {
            let contracts =
                format!("[contracts.publish.\"svc/pos/+/fix\"]\nversion = \"{version}\"\nschema = '''{schema}'''\n");
            manifest("pos", version, "svc/pos/+/fix", "in/#", &contracts)
        };
        let consumer = manifest(
            "traffic",
            "1.0.0",
            "svc/traffic/+/warning",
            "svc/+/+/fix",
            &format!("[contracts.subscribe.\"svc/+/+/fix\"]\nrequires = '''{FIX_REQUIRES}'''\n"),
        );
        let unrelated = manifest("other", "1.0.0", "svc/other/+/x", "in/#", "");
        let v1 = producer("1.0.0", &schema);
        assert_eq!(check_deploy(&v1, &[v1.clone(), consumer.clone(), unrelated.clone()]), Vec::<String>::new());
        assert_eq!(check_deploy(&consumer, &[v1.clone(), unrelated.clone()]), Vec::<String>::new());

        // The producer's new version against the running consumer, and the consumer against an old producer.
        let no_mode = schema.replace(r#""required":["class","mode"]"#, r#""required":["class"]"#);
        assert_ne!(no_mode, schema, "the schema text changed");
        let v2 = producer("2.0.0", &no_mode);
        let want = "svc/+/+/fix: traffic@1.0.0 requires property `mode` (integer) but pos@2.0.0 (schema 2.0.0 on \
                    svc/pos/+/fix) does not guarantee it";
        assert_eq!(check_deploy(&v2, &[v1.clone(), consumer.clone(), unrelated.clone()]), vec![want.to_owned()]);
        assert_eq!(check_deploy(&consumer, &[v2, unrelated.clone()]), vec![want.to_owned()]);

        // Publishing on the consumer's topic without a contract guarantees nothing.
        let bare = manifest("pos", "3.0.0", "svc/pos/+/fix", "in/#", "");
        assert_eq!(
            check_deploy(&bare, &[consumer]),
            vec![
                "svc/+/+/fix: traffic@1.0.0 declares what it requires of it but pos@3.0.0 publishes to svc/pos/+/fix \
                  without a contract (add [contracts.publish.\"svc/pos/+/fix\"] with its schema)"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn a_producer_that_guarantees_more_satisfies() {
        assert_eq!(satisfies(&fix_schema(), &requires()), vec![]);
    }

    #[test]
    fn a_required_property_the_producer_does_not_require_is_named() {
        let mut req = requires();
        req["required"] = json!(["mode", "speed"]);
        let got = satisfies(&fix_schema(), &req);
        assert_eq!(
            got,
            vec![Mismatch { path: "speed".into(), kind: MismatchKind::NotGuaranteed { wants: "number".into() } }]
        );
        assert_eq!(
            got[0].describe("traffic-awareness@1.0.0", "positioning@2.0.0"),
            "traffic-awareness@1.0.0 requires property `speed` (number) but positioning@2.0.0 does not guarantee it"
        );
    }

    #[test]
    fn types_must_fit_and_integer_satisfies_number() {
        let mut p = fix_schema();
        p["properties"]["lat"] = json!({"type": "integer"});
        assert_eq!(satisfies(&p, &requires()), vec![]);
        p["properties"]["lat"] = json!({"type": ["number", "null"]});
        p["properties"]["mode"] = json!({"type": "number", "enum": [1, 2, 3]});
        let got = satisfies(&p, &requires());
        assert_eq!(
            got,
            vec![
                Mismatch {
                    path: "mode".into(),
                    kind: MismatchKind::Type { wants: "integer".into(), has: "number".into() }
                },
                Mismatch {
                    path: "lat".into(),
                    kind: MismatchKind::Type { wants: "number".into(), has: "number or null".into() }
                },
            ]
        );
        assert_eq!(got[1].describe("c@1", "p@2"), "c@1 requires `lat` to be number but p@2 declares it number or null");
        // An optional field the producer does not describe is fine; one without a type is not.
        p["properties"].as_object_mut().expect("props").remove("lat");
        p["properties"]["speed"] = json!({});
        assert_eq!(
            satisfies(&p, &requires())[1],
            Mismatch { path: "speed".into(), kind: MismatchKind::TypeUnknown { wants: "number".into() } }
        );
    }

    #[test]
    fn enums_and_consts_must_be_subsets() {
        let mut p = fix_schema();
        p["properties"]["mode"] = json!({"type": "integer", "enum": [1, 2, 3, 4]});
        p["properties"]["class"] = json!({"type": "string"});
        let got = satisfies(&p, &requires());
        assert_eq!(
            got,
            vec![
                Mismatch {
                    path: "mode".into(),
                    kind: MismatchKind::Values { wants: "0, 1, 2, 3".into(), extra: "4".into() }
                },
                Mismatch { path: "class".into(), kind: MismatchKind::ValuesUnbounded { wants: "\"TPV\"".into() } },
            ]
        );
        p["properties"]["class"] = json!({"const": "SKY"});
        assert_eq!(
            satisfies(&p, &requires())[1].describe("c@1", "p@2"),
            "c@1 accepts `class` only as one of \"TPV\" but p@2 may send \"SKY\""
        );
    }

    #[test]
    fn nested_objects_and_arrays_are_checked_recursively() {
        let consumer = json!({
            "type": "object",
            "required": ["counts", "assets"],
            "properties": {
                "counts": {"type": "object", "required": ["assets"], "properties": {"assets": {"type": "integer"}}},
                "assets": {"type": "array", "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}}
            }
        });
        let good = json!({
            "type": "object",
            "required": ["counts", "assets", "site"],
            "properties": {
                "counts": {"type": "object", "required": ["assets", "critical"], "properties": {"assets": {"type": "integer"}}},
                "assets": {"type": "array", "items": {"type": "object", "required": ["id", "lat"], "properties": {"id": {"type": "string"}}}}
            }
        });
        assert_eq!(satisfies(&good, &consumer), vec![]);
        let mut bad = good.clone();
        bad["properties"]["counts"]["required"] = json!(["critical"]);
        bad["properties"]["assets"]["items"]["properties"]["id"] = json!({"type": "integer"});
        let got = satisfies(&bad, &consumer);
        assert_eq!(
            got,
            vec![
                Mismatch {
                    path: "counts.assets".into(),
                    kind: MismatchKind::NotGuaranteed { wants: "integer".into() }
                },
                Mismatch {
                    path: "assets[].id".into(),
                    kind: MismatchKind::Type { wants: "string".into(), has: "integer".into() }
                },
            ]
        );
        // No `items` at all: the element type is not declared.
        bad["properties"]["assets"].as_object_mut().expect("obj").remove("items");
        assert_eq!(
            satisfies(&bad, &consumer)[1],
            Mismatch { path: "assets[]".into(), kind: MismatchKind::TypeUnknown { wants: "object".into() } }
        );
    }

    #[test]
    fn schema_shape_problems_are_all_listed() {
        assert_eq!(schema_problems(&fix_schema().to_string()), Vec::<String>::new());
        let p = schema_problems(
            r#"{"type": "obj", "required": "mode", "properties": {"a": 3, "b": {"type": ["string", 1]}}}"#,
        );
        assert_eq!(
            p,
            vec![
                "the schema: `type` 'obj' is not one of object, array, string, number, integer, boolean, null"
                    .to_owned(),
                "the schema: `required` must be a list of property names".into(),
                "`a` is not a JSON object".into(),
                "`b`: `type` must be a type name or a list of them".into(),
            ]
        );
        assert!(schema_problems("[1]")[0].contains("not a JSON object"));
        assert!(schema_problems("{nope")[0].starts_with("is not JSON"));
    }

    #[test]
    fn payloads_are_validated_against_a_schema() {
        let s = fix_schema();
        let ok = json!({"class": "TPV", "device": "d", "mode": 3, "lat": 50.5, "speed": 0});
        assert_eq!(validate(&s, &ok), Vec::<String>::new());
        let bad = json!({"class": "SKY", "mode": 5, "lat": "north", "speed": null});
        assert_eq!(
            validate(&s, &bad),
            vec![
                "`class` is \"SKY\", schema allows only \"TPV\"".to_owned(),
                "`lat` is string (\"north\"), schema says number".into(),
                "`mode` is 5, schema allows only 1, 2, 3".into(),
                "`speed` is null (null), schema says number".into(),
            ]
        );
        assert_eq!(validate(&s, &json!({"mode": 1})), vec!["payload lacks required property `class`".to_owned()]);
    }
}
