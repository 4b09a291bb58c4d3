//! Broker access control for a fleet: each gateway logs in with its own
//! user name (= its gateway id) and may touch only its own topics.
//!
//! Mosquitto's `pattern` lines substitute `%u` with the user name, so one
//! ACL file serves any number of gateways; only the password file grows.
//! EMQX and VerneMQ express the same rule with `${username}` / `%u`
//! placeholders in their ACL rules.

/// The Mosquitto ACL file for a fleet whose operations center logs in as
/// `ops_user`.
pub fn mosquitto_acl(ops_user: &str) -> String {
    format!(
        "# Outpost fleet ACL (written by outpost-ops). A gateway's user name is its id.\n\
         # The operations center sees every gateway's topics.\n\
         user {ops_user}\n\
         topic readwrite outpost/fleet/#\n\
         \n\
         # Every other user: its own topics only.\n\
         pattern read outpost/fleet/%u/desired\n\
         pattern write outpost/fleet/%u/reported\n\
         pattern write outpost/fleet/%u/events\n\
         pattern write outpost/fleet/%u/data/#\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_acl_names_the_ops_user_and_gateway_patterns() {
        let acl = super::mosquitto_acl("ops");
        assert!(acl.contains("user ops\ntopic readwrite outpost/fleet/#"));
        assert!(acl.contains("pattern read outpost/fleet/%u/desired"));
        assert!(!acl.contains("pattern write outpost/fleet/%u/desired"), "a gateway never writes its own desired state");
    }
}
