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

/// Compares the component's imports and exports with the world.
pub fn check_contract(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let mut problems = Vec::new();
    for (name, item) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix("outpost:service/") {
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            let (_, ours) = SUPPORTED_WORLD.split_once('@').unwrap_or(("", ""));
            let major = |v: &str| v.split('.').next().map(str::to_owned);
            if version.is_empty() || major(version) != major(ours) {
                problems.push(format!(
                    "imports {name}, built for outpost:service@{} but this agent provides {SUPPORTED_WORLD}",
                    if version.is_empty() { "(unversioned)" } else { version }
                ));
            } else if !OUTPOST_INTERFACES.contains(&iface) {
                problems
                    .push(format!("imports unknown interface {name}; {SUPPORTED_WORLD} has {OUTPOST_INTERFACES:?}"));
            }
        } else if name.starts_with("outpost:") {
            problems.push(format!("imports {name}, which this agent does not provide (it hosts {SUPPORTED_WORLD})"));
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
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_told_apart() {
        assert!(check_component_bytes(b"hello world").unwrap_err().contains("not a WebAssembly binary"));
        let core = wat::parse_str("(module)").expect("wat");
        assert!(check_component_bytes(&core).unwrap_err().contains("core WebAssembly module"));
        let comp = wat::parse_str("(component)").expect("wat");
        assert!(check_component_bytes(&comp).is_ok());
    }
}
