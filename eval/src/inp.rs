//! EPANET `.inp` reader, enough for topology: nodes (`[JUNCTIONS]`, `[RESERVOIRS]`,
//! `[TANKS]`), links (`[PIPES]` with their length, `[PUMPS]`, `[VALVES]`) and
//! `[COORDINATES]`. Every other section is skipped.
//!
//! Rules follow EPANET 2.2's input reader where they matter for topology: `;` starts a
//! comment, fields are separated by whitespace, section names are case-insensitive, a
//! node or link id is unique within its kind, a link's end nodes must be defined
//! (anywhere in the file) and differ, and a pipe's length must be positive. Each error
//! names the file and the 1-based line.

use std::collections::HashMap;
use std::path::Path;

/// What went wrong while reading an `.inp` file; `file` is the name given to the
/// parser (the path for [`read_inp`]), `line` is 1-based.
#[derive(Debug, thiserror::Error)]
pub enum InpError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: [{section}] needs {expected}, found {found} field(s)")]
    MissingField { file: String, line: usize, section: String, expected: &'static str, found: usize },
    #[error("{file}:{line}: [{section}] {field} is not a number: {value:?}")]
    BadNumber { file: String, line: usize, section: String, field: &'static str, value: String },
    #[error("{file}:{line}: [{section}] {field} must be {rule}, got {value}")]
    BadValue { file: String, line: usize, section: String, field: &'static str, rule: &'static str, value: f64 },
    #[error("{file}:{line}: {kind} id {id:?} is defined twice (first on line {first_line})")]
    DuplicateId { file: String, line: usize, kind: &'static str, id: String, first_line: usize },
    #[error("{file}:{line}: link {link:?} refers to unknown node {node:?}")]
    UnknownNode { file: String, line: usize, link: String, node: String },
    #[error("{file}:{line}: link {link:?} starts and ends at the same node {node:?}")]
    SelfLoop { file: String, line: usize, link: String, node: String },
    #[error("{file}:{line}: coordinates given for unknown node {node:?}")]
    UnknownCoordinateNode { file: String, line: usize, node: String },
    #[error("{file}:{line}: data line before any [SECTION] header")]
    NoSection { file: String, line: usize },
}

/// Kind of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Junction,
    Reservoir,
    Tank,
}

/// Kind of link. Only pipes carry a length; EPANET gives pumps and valves length 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Pipe,
    Pump,
    Valve,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    /// Junction and tank elevation, reservoir head (m in SI files).
    pub elevation: f64,
    /// 1-based line of the definition.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub id: String,
    pub kind: LinkKind,
    pub from: String,
    pub to: String,
    /// Pipe length in the file's length unit (m for SI flow units); 0 for pumps and valves.
    pub length: f64,
    /// Pipe or valve diameter (mm for SI flow units); 0 for pumps.
    pub diameter: f64,
    /// 1-based line of the definition.
    pub line: usize,
}

/// The topology part of an EPANET input file, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InpNetwork {
    /// File name given to the parser (used in later error messages).
    pub file: String,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    /// Node id → (x, y) in the file's map units.
    pub coordinates: HashMap<String, (f64, f64)>,
}

impl InpNetwork {
    pub fn junctions(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.kind == NodeKind::Junction)
    }
    pub fn pipes(&self) -> impl Iterator<Item = &Link> {
        self.links.iter().filter(|l| l.kind == LinkKind::Pipe)
    }
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
    pub fn link(&self, id: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.id == id)
    }
}

/// Reads and parses an `.inp` file; errors name `path`.
pub fn read_inp(path: &Path) -> Result<InpNetwork, InpError> {
    let file = path.display().to_string();
    // EPANET files are often Latin-1 (comments with accents): decode lossily, ids are ASCII.
    let bytes = std::fs::read(path).map_err(|source| InpError::Io { file: file.clone(), source })?;
    parse_inp(&String::from_utf8_lossy(&bytes), &file)
}

#[derive(Clone, Copy, PartialEq)]
enum Section {
    Junctions,
    Reservoirs,
    Tanks,
    Pipes,
    Pumps,
    Valves,
    Coordinates,
    Other,
}

/// Parses the text of an `.inp` file; `file` is only used in error messages.
pub fn parse_inp(text: &str, file: &str) -> Result<InpNetwork, InpError> {
    let mut net = InpNetwork { file: file.to_string(), ..Default::default() };
    let mut node_lines: HashMap<String, usize> = HashMap::new();
    let mut link_lines: HashMap<String, usize> = HashMap::new();
    // Coordinates may come before the nodes they place: check them at the end.
    let mut coordinate_lines: Vec<(usize, String)> = Vec::new();
    let mut section: Option<(Section, String)> = None;

    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.split(';').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if let Some(rest) = content.strip_prefix('[') {
            let name = rest.split(']').next().unwrap_or("").trim().to_ascii_uppercase();
            let kind = match name.as_str() {
                "JUNCTIONS" => Section::Junctions,
                "RESERVOIRS" => Section::Reservoirs,
                "TANKS" => Section::Tanks,
                "PIPES" => Section::Pipes,
                "PUMPS" => Section::Pumps,
                "VALVES" => Section::Valves,
                "COORDINATES" => Section::Coordinates,
                _ => Section::Other,
            };
            section = Some((kind, name));
            continue;
        }
        let Some((kind, name)) = &section else {
            return Err(InpError::NoSection { file: file.to_string(), line });
        };
        let fields: Vec<&str> = content.split_whitespace().collect();
        let ctx = Ctx { file, line, section: name, fields: &fields };
        match kind {
            Section::Other => {}
            Section::Junctions | Section::Reservoirs | Section::Tanks => {
                ctx.need(2, "an id and an elevation/head")?;
                let node_kind = match kind {
                    Section::Junctions => NodeKind::Junction,
                    Section::Reservoirs => NodeKind::Reservoir,
                    _ => NodeKind::Tank,
                };
                let elevation = ctx.number(1, "elevation/head")?;
                let id = fields[0].to_string();
                if let Some(&first_line) = node_lines.get(&id) {
                    return Err(InpError::DuplicateId { file: file.to_string(), line, kind: "node", id, first_line });
                }
                node_lines.insert(id.clone(), line);
                net.nodes.push(Node { id, kind: node_kind, elevation, line });
            }
            Section::Pipes | Section::Pumps | Section::Valves => {
                let (link_kind, length, diameter) = match kind {
                    Section::Pipes => {
                        ctx.need(5, "id, node1, node2, length, diameter")?;
                        let length = ctx.number(3, "length")?;
                        if !(length > 0.0 && length.is_finite()) {
                            return Err(ctx.bad_value("length", "positive", length));
                        }
                        let diameter = ctx.number(4, "diameter")?;
                        if !(diameter > 0.0 && diameter.is_finite()) {
                            return Err(ctx.bad_value("diameter", "positive", diameter));
                        }
                        (LinkKind::Pipe, length, diameter)
                    }
                    Section::Pumps => {
                        ctx.need(3, "id, node1, node2")?;
                        (LinkKind::Pump, 0.0, 0.0)
                    }
                    _ => {
                        ctx.need(4, "id, node1, node2, diameter")?;
                        (LinkKind::Valve, 0.0, ctx.number(3, "diameter")?)
                    }
                };
                let id = fields[0].to_string();
                if let Some(&first_line) = link_lines.get(&id) {
                    return Err(InpError::DuplicateId { file: file.to_string(), line, kind: "link", id, first_line });
                }
                if fields[1] == fields[2] {
                    return Err(InpError::SelfLoop {
                        file: file.to_string(),
                        line,
                        link: id,
                        node: fields[1].to_string(),
                    });
                }
                link_lines.insert(id.clone(), line);
                net.links.push(Link {
                    id,
                    kind: link_kind,
                    from: fields[1].to_string(),
                    to: fields[2].to_string(),
                    length,
                    diameter,
                    line,
                });
            }
            Section::Coordinates => {
                ctx.need(3, "node, x, y")?;
                let x = ctx.number(1, "x")?;
                let y = ctx.number(2, "y")?;
                coordinate_lines.push((line, fields[0].to_string()));
                net.coordinates.insert(fields[0].to_string(), (x, y));
            }
        }
    }

    for link in &net.links {
        for node in [&link.from, &link.to] {
            if !node_lines.contains_key(node) {
                return Err(InpError::UnknownNode {
                    file: file.to_string(),
                    line: link.line,
                    link: link.id.clone(),
                    node: node.clone(),
                });
            }
        }
    }
    for (line, node) in coordinate_lines {
        if !node_lines.contains_key(&node) {
            return Err(InpError::UnknownCoordinateNode { file: file.to_string(), line, node });
        }
    }
    Ok(net)
}

struct Ctx<'a> {
    file: &'a str,
    line: usize,
    section: &'a str,
    fields: &'a [&'a str],
}

impl Ctx<'_> {
    fn need(&self, n: usize, expected: &'static str) -> Result<(), InpError> {
        if self.fields.len() < n {
            return Err(InpError::MissingField {
                file: self.file.to_string(),
                line: self.line,
                section: self.section.to_string(),
                expected,
                found: self.fields.len(),
            });
        }
        Ok(())
    }

    fn number(&self, i: usize, field: &'static str) -> Result<f64, InpError> {
        let value = self.fields[i];
        value.parse::<f64>().map_err(|_| InpError::BadNumber {
            file: self.file.to_string(),
            line: self.line,
            section: self.section.to_string(),
            field,
            value: value.to_string(),
        })
    }

    fn bad_value(&self, field: &'static str, rule: &'static str, value: f64) -> InpError {
        InpError::BadValue {
            file: self.file.to_string(),
            line: self.line,
            section: self.section.to_string(),
            field,
            rule,
            value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "[TITLE]\nsmall\n\n[JUNCTIONS]\n;ID Elev\n J1 10 ;comment\n j2\t12.5\n[reservoirs]\n R 100\n\
        [TANKS]\n T 50 1 0 4 10 0\n[PIPES]\n P1 R J1 100 200 140 0 Open ;\n P2 J1 j2 50.5 150 120\n\
        [PUMPS]\n PU j2 T HEAD 1\n[VALVES]\n V1 J1 T 100 PRV 30 0\n[COORDINATES]\n J1 1.5 -2\n[END]\n";

    #[test]
    fn parses_every_topology_section() {
        let net = parse_inp(SMALL, "small.inp").unwrap();
        let ids: Vec<_> = net.nodes.iter().map(|n| (n.id.as_str(), n.kind, n.elevation, n.line)).collect();
        assert_eq!(
            ids,
            vec![
                ("J1", NodeKind::Junction, 10.0, 6),
                ("j2", NodeKind::Junction, 12.5, 7),
                ("R", NodeKind::Reservoir, 100.0, 9),
                ("T", NodeKind::Tank, 50.0, 11)
            ]
        );
        let links: Vec<_> =
            net.links.iter().map(|l| (l.id.as_str(), l.kind, l.from.as_str(), l.to.as_str(), l.length)).collect();
        assert_eq!(
            links,
            vec![
                ("P1", LinkKind::Pipe, "R", "J1", 100.0),
                ("P2", LinkKind::Pipe, "J1", "j2", 50.5),
                ("PU", LinkKind::Pump, "j2", "T", 0.0),
                ("V1", LinkKind::Valve, "J1", "T", 0.0)
            ]
        );
        assert_eq!(net.link("V1").unwrap().diameter, 100.0);
        assert_eq!(net.coordinates.get("J1"), Some(&(1.5, -2.0)));
        assert_eq!(net.pipes().count(), 2);
        assert_eq!(net.junctions().count(), 2);
    }

    /// Each malformed input yields its own error naming the file and the offending line.
    #[test]
    fn malformed_inputs_name_file_and_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("[JUNCTIONS]\n J1 10\n J2 abc\n", 3, "elevation/head is not a number: \"abc\""),
            ("[JUNCTIONS]\n J1 10\n J1 11\n", 3, "defined twice (first on line 2)"),
            ("[JUNCTIONS]\n J1 10\n J2 10\n[PIPES]\n P1 J1 J2 -5 100\n", 5, "length must be positive, got -5"),
            (
                "[JUNCTIONS]\n J1 10\n J2 10\n[PIPES]\n P1 J1 J2 5\n",
                5,
                "needs id, node1, node2, length, diameter, found 4",
            ),
            ("[JUNCTIONS]\n J1 10\n[PIPES]\n\n P1 J1 J9 5 100\n", 5, "unknown node \"J9\""),
            ("[JUNCTIONS]\n J1 10\n[PIPES]\n P1 J1 J1 5 100\n", 4, "same node"),
            ("[JUNCTIONS]\n J1 10\n[COORDINATES]\n J7 1 2\n", 4, "unknown node \"J7\""),
            ("J1 10\n", 1, "before any [SECTION]"),
            (
                "[JUNCTIONS]\n J1 10\n J2 10\n[PIPES]\n P1 J1 J2 5 100\n[VALVES]\n P1 J1 J2 100 PRV 1\n",
                7,
                "link id \"P1\"",
            ),
        ];
        for (text, line, needle) in cases {
            let err = parse_inp(text, "bad.inp").expect_err(text).to_string();
            let prefix = format!("bad.inp:{line}: ");
            assert!(err.starts_with(&prefix), "{err:?} should start with {prefix:?}");
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_inp(Path::new("/nonexistent/x.inp")).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/x.inp: cannot read"), "{err}");
    }
}
