//! bench placeholder
use anyhow::Result;
use std::path::Path;
pub fn run(_root: &Path, _args: &[String]) -> Result<()> {
    anyhow::bail!("bench: not yet")
}
