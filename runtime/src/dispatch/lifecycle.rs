//! Lifecycle changes the dispatcher applies between two batches: install,
//! upgrade (with state handover and probation), remove, scale, config,
//! canary and shadow. Each moves queued envelopes, with their unsent
//! acknowledgements, to the deployment that takes over, queue by queue, so
//! no message is lost or handled twice and each key keeps its order.

use super::*;

impl Dispatcher {
    /// Installs a new service. Refused if one of that name runs, or if no
    /// instance starts (nothing is left behind then).
    pub fn install(&mut self, def: ServiceDef) -> Result<(), LifecycleError> {
        if self.find(def.name()).is_some() {
            return Err(LifecycleError::Exists(def.name().to_owned()));
        }
        let deployment = self.deploy_strict(Arc::new(def))?;
        self.services.push(ServiceSlot { current: deployment, canary: None, shadow: None, probation: None });
        Ok(())
    }

    /// Replaces the serving version of a service between two batches: the
    /// new version's instances start first (a failing `init` leaves the old
    /// version serving), then the old version's queued messages move over in
    /// order and the old instances are dropped. State is namespaced by
    /// service name, so the new version reads what the old one wrote.
    /// With `probation`, a crash loop inside the window, or a new version
    /// judged worse than the old one at its end, rolls back by itself.
    pub fn upgrade(&mut self, def: ServiceDef, probation: Option<ProbationPolicy>) -> Result<(), LifecycleError> {
        let s = self.find(def.name()).ok_or_else(|| LifecycleError::Unknown(def.name().to_owned()))?;
        let mut deployment = self.deploy_strict(Arc::new(def))?;
        // State handover (outpost:service@1.1.0 `migrate`): once, before the
        // swap; its writes commit only if it succeeds, else v-old keeps serving.
        let from = self.services[s].current.def.version().to_owned();
        if let Some(Health::Running(first)) = deployment.instances.first_mut().map(|i| &mut i.health) {
            first.migrate(&from).map_err(|e| LifecycleError::Refused {
                service: deployment.def.name().to_owned(),
                message: format!("{} refused to migrate the state of {from}: {e}", deployment.def.version()),
            })?;
        }
        let slot = &mut self.services[s];
        // A running canary or shadow belongs to the version being replaced.
        if let Some(c) = slot.canary.take() {
            let shard_by = slot.current.def.manifest.scale.shard_by;
            drain_into(c.deployment, &mut slot.current, shard_by);
        }
        if let Some((shadow, _)) = slot.shadow.take() {
            shadow.def.metrics.retire();
        }
        let old = std::mem::replace(&mut slot.current, deployment);
        let previous = old.def.clone();
        let shard_by = slot.current.def.manifest.scale.shard_by;
        drain_into(old, &mut slot.current, shard_by);
        slot.probation = probation.map(|policy| Probation {
            baseline: probation::Baseline::take(&previous, &slot.current.def),
            previous,
            until: Instant::now() + policy.window,
            policy,
        });
        slot.current.def.metrics.instances.set(slot.current.running() as i64);
        Ok(())
    }

    /// Retires a service: what is queued for it is handled first (as far as
    /// its instances can), then it is dropped. Returns messages left
    /// unhandled (their acknowledgements go out; the service is gone).
    pub fn remove(&mut self, name: &str) -> Result<usize, LifecycleError> {
        let s = self.find(name).ok_or_else(|| LifecycleError::Unknown(name.to_owned()))?;
        self.run_until_idle();
        let slot = self.services.remove(s);
        slot.current.def.metrics.instances.set(0);
        slot.current.def.metrics.queue_depth.set(0);
        Ok(slot.current.queued() + slot.canary.map_or(0, |c| c.deployment.queued()))
    }

    /// Changes the instance count; queued messages are re-sharded in order.
    pub fn scale(&mut self, name: &str, instances: u32) -> Result<(), LifecycleError> {
        let s = self.find(name).ok_or_else(|| LifecycleError::Unknown(name.to_owned()))?;
        let current = &self.services[s].current;
        if instances == 0 || instances > crate::manifest::MAX_INSTANCES {
            return Err(LifecycleError::Refused {
                service: name.into(),
                message: format!("instances must be 1 to {}", crate::manifest::MAX_INSTANCES),
            });
        }
        if instances > 1 && current.def.manifest.scale.shard_by.is_none() {
            return Err(LifecycleError::Refused {
                service: name.into(),
                message:
                    "scaling past one instance needs scale.shard_by in the manifest (which topic level keeps order)"
                        .into(),
            });
        }
        let mut def = (*current.def).clone();
        def.instances = instances;
        self.replace_current(s, def)
    }

    /// New site config for a service: instances restart with it.
    pub fn set_config(&mut self, name: &str, config_json: String) -> Result<(), LifecycleError> {
        let s = self.find(name).ok_or_else(|| LifecycleError::Unknown(name.to_owned()))?;
        let mut def = (*self.services[s].current.def).clone();
        def.config_json = config_json;
        self.replace_current(s, def)
    }

    /// Restarts a service's serving instances on the optimized code its
    /// factory now holds, if they run baseline code of component `digest`
    /// (a fast start); queued messages move over in order. `Ok(false)`
    /// when there is nothing to do: the service was upgraded or removed
    /// meanwhile, or already runs optimized code.
    pub fn restart_on_optimized_code(&mut self, name: &str, digest: &str) -> Result<bool, LifecycleError> {
        let Some(s) = self.find(name) else { return Ok(false) };
        let current = &self.services[s].current;
        if current.code != CodeTier::Baseline
            || current.def.factory.digest() != digest
            || current.def.factory.code_tier() != CodeTier::Optimized
        {
            return Ok(false);
        }
        // Instances waiting to restart after a fault restart here, on the
        // new code: counted as the restarts they are.
        let waiting = current.instances.iter().filter(|i| matches!(i.health, Health::Backoff { .. })).count();
        let def = (*current.def).clone();
        let version = def.version().to_owned();
        self.replace_current(s, def)?;
        self.services[s].current.def.metrics.restarts.inc_by(waiting as u64);
        let event = serde_json::json!({"event": "optimized_code", "service": name, "version": version,
            "digest": digest, "ts_ms": now_ms()});
        self.emit(&format!("outpost/{}/events", self.gateway), &event.to_string());
        Ok(true)
    }

    pub(super) fn replace_current(&mut self, s: usize, def: ServiceDef) -> Result<(), LifecycleError> {
        let deployment = self.deploy_strict(Arc::new(def))?;
        let slot = &mut self.services[s];
        let old = std::mem::replace(&mut slot.current, deployment);
        let shard_by = slot.current.def.manifest.scale.shard_by;
        drain_into(old, &mut slot.current, shard_by);
        slot.current.def.metrics.instances.set(slot.current.running() as i64);
        Ok(())
    }

    /// Routes `percent` of the shard keys to `def`, a new version of a
    /// running service; the rest stay on the serving version.
    pub fn start_canary(&mut self, def: ServiceDef, percent: u8) -> Result<(), LifecycleError> {
        let name = def.name().to_owned();
        let s = self.find(&name).ok_or_else(|| LifecycleError::Unknown(name.clone()))?;
        if !(1..=99).contains(&percent) {
            return Err(LifecycleError::Refused { service: name, message: "canary share must be 1 to 99 %".into() });
        }
        if self.services[s].canary.is_some() {
            return Err(LifecycleError::Refused {
                service: name,
                message: "a canary is already running; promote or abort it first".into(),
            });
        }
        let deployment = self.deploy_strict(Arc::new(def))?;
        let slot = &mut self.services[s];
        // Keys now owned by the canary take their queued messages along, so
        // per-key order holds across the split.
        let mut moved = Canary { deployment, percent };
        let old = std::mem::take(&mut slot.current.instances);
        let mut keep = Deployment { instances: old, ..slot.current.shell() };
        let shard_by = slot.current.def.manifest.scale.shard_by;
        for inst in &mut keep.instances {
            let queued: Vec<Envelope> = inst.queue.drain(..).collect();
            for env in queued {
                if canary_bucket(&env.topic, shard_by) < u64::from(percent) {
                    moved.deployment.push(env, shard_by);
                } else {
                    inst.queue.push_back(env);
                }
            }
        }
        slot.current.instances = keep.instances;
        slot.canary = Some(moved);
        Ok(())
    }

    /// Makes the canary the serving version.
    pub fn promote_canary(&mut self, name: &str) -> Result<String, LifecycleError> {
        let s = self.find(name).ok_or_else(|| LifecycleError::Unknown(name.to_owned()))?;
        let slot = &mut self.services[s];
        let canary = slot
            .canary
            .take()
            .ok_or_else(|| LifecycleError::Refused { service: name.into(), message: "no canary is running".into() })?;
        let old = std::mem::replace(&mut slot.current, canary.deployment);
        let shard_by = slot.current.def.manifest.scale.shard_by;
        drain_into(old, &mut slot.current, shard_by);
        Ok(slot.current.def.version().to_owned())
    }

    /// Stops the canary; its keys (and queued messages) go back.
    pub fn abort_canary(&mut self, name: &str) -> Result<(), LifecycleError> {
        let s = self.find(name).ok_or_else(|| LifecycleError::Unknown(name.to_owned()))?;
        let slot = &mut self.services[s];
        let canary = slot
            .canary
            .take()
            .ok_or_else(|| LifecycleError::Refused { service: name.into(), message: "no canary is running".into() })?;
        let shard_by = slot.current.def.manifest.scale.shard_by;
        drain_into(canary.deployment, &mut slot.current, shard_by);
        Ok(())
    }

    /// Runs `def` on a copy of the service's live input; its outputs are
    /// held aside and compared with the serving version's, topic by topic.
    pub fn start_shadow(&mut self, def: ServiceDef) -> Result<(), LifecycleError> {
        let name = def.name().to_owned();
        let s = self.find(&name).ok_or_else(|| LifecycleError::Unknown(name.clone()))?;
        let version = def.version().to_owned();
        let deployment = self.deploy_strict(Arc::new(def))?;
        let current = self.services[s].current.def.version().to_owned();
        self.services[s].shadow = Some((deployment, ShadowReport::new(&name, &current, &version)));
        Ok(())
    }

    /// The comparison so far; `stop` ends the shadow run.
    pub fn shadow_report(&mut self, name: &str, stop: bool) -> Result<ShadowReport, LifecycleError> {
        let s = self.find(name).ok_or_else(|| LifecycleError::Unknown(name.to_owned()))?;
        let slot = &mut self.services[s];
        let report = slot
            .shadow
            .as_ref()
            .map(|(_, r)| r.clone())
            .ok_or_else(|| LifecycleError::Refused { service: name.into(), message: "no shadow run".into() })?;
        if stop {
            if let Some((shadow, _)) = slot.shadow.take() {
                if shadow.def.version() != slot.current.def.version() {
                    shadow.def.metrics.retire();
                }
            }
        }
        Ok(report)
    }

    /// A version on probation that faults `max_faults` times inside its
    /// window, or is judged worse than the previous one when the window
    /// ends, is replaced by the previous one, here on the gateway, with no
    /// one asked: the fleet learns it from the notice and the event.
    pub(super) fn check_probation(&mut self) {
        for s in 0..self.services.len() {
            let slot = &mut self.services[s];
            let Some(p) = &slot.probation else { continue };
            let verdict = if slot.current.faults >= p.policy.max_faults {
                Err(format!("{} faults within the probation window", slot.current.faults))
            } else if Instant::now() >= p.until {
                let metrics = &slot.current.def.metrics;
                probation::judge(&p.policy, &p.baseline, probation::Counts::of(&slot.current.def), |k| {
                    metrics.site_kpi(k)
                })
            } else {
                continue;
            };
            let previous = (*p.previous).clone();
            slot.probation = None;
            let name = previous.name().to_owned();
            let from = slot.current.def.version().to_owned();
            match verdict {
                Ok(()) => {
                    tracing::info!(service = %name, version = %from, "probation passed");
                    self.notices.push(Notice::Promoted { service: name, version: from });
                }
                Err(reason) => {
                    let to = previous.version().to_owned();
                    match self.replace_current(s, previous) {
                        Ok(()) => {
                            tracing::error!(service = %name, %from, %to, %reason, "probation failed; rolled back");
                            let body = serde_json::json!({"event": "rolled_back", "service": name, "from": from,
                                "to": to, "reason": reason, "ts_ms": now_ms()});
                            self.emit(&format!("outpost/{}/events", self.gateway), &body.to_string());
                            self.notices.push(Notice::RolledBack { service: name, from, to, reason });
                        }
                        Err(e) => tracing::error!(service = %name, error = %e, "automatic rollback failed"),
                    }
                }
            }
        }
    }
}
