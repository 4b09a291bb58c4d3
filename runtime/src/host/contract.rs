//! Checks that a component is one this agent can host, before instantiating
//! it, with errors that name both sides (what it has, what we expect).

use crate::manifest::SUPPORTED_WORLD;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;
use wasmtime::Engine;

const REQUIRED_EXPORTS: [&str; 3] = ["init", "handle", "tick"];
const OUTPOST_INTERFACES: [&str; 5] = ["types", "bus", "state", "log", "metrics"];

/// Tells a component from a core module or something else entirely by its header.
pub fn check_component_bytes(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(format!(
            "is not a WebAssembly binary (expected the \\0asm header, found {} bytes starting {:02x?})",
            bytes.len(),
            &bytes[..bytes.len().min(4)]
        ));
    }
    match &bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(format!(
            "is a core WebAssembly module, not a component; build the service for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`) so it implements {SUPPORTED_WORLD}"
        )),
        v => Err(format!("has an unknown WebAssembly version/layer {v:02x?}")),
    }
}

/// The `outpost:service` versions this agent hosts, oldest first. 1.1.0
/// added the optional `migrate` export and 1.2.0 `handle-packed`; neither
/// changed an imported function.
pub const HOSTED_VERSIONS: [&str; 3] = ["1.0.0", "1.1.0", "1.2.0"];

/// What the contract check learnt about a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractInfo {
    /// The newest `outpost:service` version it imports (1.0.0 when it imports
    /// none: it then uses nothing newer).
    pub wit_version: semver::Version,
    /// It exports `migrate` (1.1.0).
    pub migrate: bool,
    /// It exports `handle-packed` (1.2.0).
    pub packed: bool,
}

fn hosted() -> String {
    HOSTED_VERSIONS.iter().map(|v| format!("outpost:service@{v}")).collect::<Vec<_>>().join(", ")
}

/// Compares the component's imports and exports with the world.
pub fn check_contract(engine: &Engine, component: &Component) -> Result<ContractInfo, String> {
    let ty = component.component_type();
    let mut problems = Vec::new();
    let newest = semver::Version::parse(HOSTED_VERSIONS[HOSTED_VERSIONS.len() - 1]).expect("hosted version");
    let mut wit_version = semver::Version::new(1, 0, 0);
    for (name, item) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix("outpost:service/") {
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            match semver::Version::parse(version) {
                Ok(v) if v.major == newest.major && v <= newest => {
                    if !OUTPOST_INTERFACES.contains(&iface) {
                        problems.push(format!(
                            "imports unknown interface {name}; {SUPPORTED_WORLD} has {OUTPOST_INTERFACES:?}"
                        ));
                    }
                    wit_version = wit_version.max(v);
                }
                _ => problems.push(format!(
                    "imports {name}, built for outpost:service@{} but this agent provides {}",
                    if version.is_empty() { "(unversioned)" } else { version },
                    hosted()
                )),
            }
        } else if name.starts_with("outpost:") {
            problems.push(format!("imports {name}, which this agent does not provide (it hosts {})", hosted()));
        } else if !name.starts_with("wasi:") {
            problems.push(format!("imports {name}, which this agent does not provide"));
        }
        let _ = item;
    }
    let exports: Vec<(String, bool)> = ty
        .exports(engine)
        .map(|(name, item)| (name.to_owned(), matches!(item.ty, ComponentItem::ComponentFunc(_))))
        .collect();
    for want in REQUIRED_EXPORTS {
        match exports.iter().find(|(n, _)| n == want) {
            Some((_, true)) => {}
            Some((_, false)) => problems.push(format!("exports `{want}` but not as a function")),
            None => problems.push(format!(
                "does not export `{want}` (exports: [{}])",
                exports.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
    let mut optional = |want: &str| match exports.iter().find(|(n, _)| n == want) {
        Some((_, true)) => true,
        Some((_, false)) => {
            problems.push(format!("exports `{want}` but not as a function"));
            false
        }
        None => false,
    };
    let (migrate, packed) = (optional("migrate"), optional("handle-packed"));
    if packed && !migrate {
        problems.push("exports `handle-packed` without `migrate`; outpost:service@1.2.0 has both".into());
    }
    if problems.is_empty() {
        Ok(ContractInfo { wit_version, migrate, packed })
    } else {
        Err(problems.join("; "))
    }
}

/// A manifest's `world` must name the component's WIT version or a newer
/// one of the same major (a 1.0.0 component may say 1.1.0, not the reverse).
pub fn check_world_matches(manifest_world: &str, component: &semver::Version) -> Result<(), String> {
    let declared = manifest_world.split_once('@').and_then(|(_, v)| semver::Version::parse(v).ok());
    match declared {
        Some(d) if d.major == component.major && *component <= d => Ok(()),
        _ => Err(format!(
            "the component is built against outpost:service@{component} but its service.toml says world = \"{manifest_world}\"; \
             set world = \"outpost:service@{component}\" (or rebuild the component against {manifest_world})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_world_may_be_newer_not_older() {
        let v10 = semver::Version::new(1, 0, 0);
        let v11 = semver::Version::new(1, 1, 0);
        assert!(check_world_matches("outpost:service@1.0.0", &v10).is_ok());
        assert!(check_world_matches("outpost:service@1.1.0", &v10).is_ok());
        assert!(check_world_matches("outpost:service@1.1.0", &v11).is_ok());
        let err = check_world_matches("outpost:service@1.0.0", &v11).unwrap_err();
        assert!(err.contains("outpost:service@1.1.0") && err.contains("outpost:service@1.0.0"), "{err}");
    }

    #[test]
    fn headers_are_told_apart() {
        assert!(check_component_bytes(b"hello world").unwrap_err().contains("not a WebAssembly binary"));
        let core = wat::parse_str("(module)").expect("wat");
        assert!(check_component_bytes(&core).unwrap_err().contains("core WebAssembly module"));
        let comp = wat::parse_str("(component)").expect("wat");
        assert!(check_component_bytes(&comp).is_ok());
    }
}
