//! Applying the operations center's desired state through the lifecycle,
//! exactly as a technician's `outpostctl deploy/upgrade/rollback/remove`
//! would: packages are downloaded, checked against the digest the signed
//! desired state names, then verified against the provider's key by the
//! lifecycle's intake. One service failing does not stop the others.

use super::fetch;
use crate::control::{ControlError, Lifecycle, Outcome};
use outpost_fleet::{DesiredService, DesiredState};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What one service needs, given what runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    Install,
    Upgrade,
    /// The wanted version is the one the current replaced.
    Rollback,
    Remove,
}

/// Decides the step for one service (pure).
pub fn plan(current: Option<&crate::control::DesiredService>, want: Option<&DesiredService>) -> Step {
    let running = current.filter(|c| !c.removed);
    match (running, want) {
        (None, None) => Step::Nothing,
        (Some(_), None) => Step::Remove,
        (None, Some(_)) => Step::Install,
        (Some(c), Some(w)) if c.version == w.version => Step::Nothing,
        (Some(c), Some(w)) if c.previous.as_ref().is_some_and(|p| p.version == w.version) => Step::Rollback,
        (Some(_), Some(_)) => Step::Upgrade,
    }
}

/// Applies `want`; returns the error of each service that failed.
pub async fn apply(
    lifecycle: &Lifecycle,
    want: &DesiredState,
    artifacts_url: Option<&str>,
    downloads: &Path,
    approved_by: &str,
) -> BTreeMap<String, String> {
    let mut errors = BTreeMap::new();
    for (name, target) in &want.services {
        let current = lifecycle.desired().await.services.get(name).cloned();
        let step = plan(current.as_ref(), target.as_ref());
        if step == Step::Nothing {
            continue;
        }
        let result = apply_one(lifecycle, name, step.clone(), target.as_ref(), artifacts_url, downloads, approved_by).await;
        match result {
            Ok(outcome) => tracing::info!(service = %name, version = %outcome.version, step = ?step, revision = want.revision,
                "applied the operations center's desired state"),
            Err(e) => {
                tracing::warn!(service = %name, step = ?step, revision = want.revision, error = %e,
                    "cannot apply the operations center's desired state");
                errors.insert(name.clone(), e);
            }
        }
    }
    errors
}

async fn apply_one(
    lifecycle: &Lifecycle,
    name: &str,
    step: Step,
    target: Option<&DesiredService>,
    artifacts_url: Option<&str>,
    downloads: &Path,
    approved_by: &str,
) -> Result<Outcome, String> {
    match (step, target) {
        (Step::Remove, _) => retry_busy(|| lifecycle.remove(name)).await,
        (Step::Rollback, _) => retry_busy(|| lifecycle.rollback(name)).await,
        (step @ (Step::Install | Step::Upgrade), Some(t)) => {
            if t.size > outpost_package::MAX_PACKAGE_BYTES {
                return Err(format!(
                    "the package is said to be {} bytes, above the {}-byte limit of a package",
                    t.size,
                    outpost_package::MAX_PACKAGE_BYTES
                ));
            }
            let url = fetch::artifact_url(artifacts_url, &t.artifact).map_err(|e| e.to_string())?;
            let bytes = fetch::fetch(&url, &t.digest, t.size, downloads).await.map_err(|e| e.to_string())?;
            let dir = lifecycle.intake(&bytes).await.map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(downloads.join(format!("{}.part", t.digest)));
            let pkg = crate::package::Package::load(&dir).map_err(|e| e.to_string())?;
            let m = &pkg.manifest.service;
            if m.name != name || m.version != t.version {
                return Err(format!(
                    "the package is {}@{}, the desired state asks for {name}@{}",
                    m.name, m.version, t.version
                ));
            }
            if step == Step::Install {
                retry_busy(|| lifecycle.install(&dir, approved_by)).await
            } else {
                retry_busy(|| lifecycle.upgrade(&dir, approved_by)).await
            }
        }
        (_, _) => Err("nothing to install".into()),
    }
}

/// A change by a technician may hold the lifecycle for a moment: wait for
/// it (up to 30 s) instead of failing the rollout.
async fn retry_busy<F, Fut>(mut op: F) -> Result<Outcome, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, ControlError>>,
{
    let mut waited = Duration::ZERO;
    loop {
        match op().await {
            Err(ControlError::Conflict(why)) if why.contains("in progress") && waited < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                waited += Duration::from_millis(250);
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{DesiredService as Local, PreviousVersion};
    use std::path::PathBuf;

    fn local(version: &str, previous: Option<&str>, removed: bool) -> Local {
        Local {
            version: version.into(),
            package: PathBuf::from("p"),
            instances: None,
            config: None,
            previous: previous.map(|v| PreviousVersion { version: v.into(), package: PathBuf::from("q") }),
            removed,
        }
    }

    fn want(version: &str) -> DesiredService {
        DesiredService { version: version.into(), digest: "a".repeat(64), artifact: "/a".into(), size: 1 }
    }

    #[test]
    fn each_case_gets_its_step() {
        assert_eq!(plan(None, None), Step::Nothing);
        assert_eq!(plan(None, Some(&want("1"))), Step::Install);
        assert_eq!(plan(Some(&local("1", None, true)), Some(&want("1"))), Step::Install, "a removed service comes back");
        assert_eq!(plan(Some(&local("1", None, false)), Some(&want("1"))), Step::Nothing);
        assert_eq!(plan(Some(&local("2", Some("1"), false)), Some(&want("1"))), Step::Rollback);
        assert_eq!(plan(Some(&local("1", None, false)), Some(&want("2"))), Step::Upgrade);
        assert_eq!(plan(Some(&local("1", None, false)), None), Step::Remove);
        assert_eq!(plan(Some(&local("1", None, true)), None), Step::Nothing);
    }
}
