//! The management API over TLS ([api] tls_cert / tls_key): a site CA made
//! with the openssl CLI signs the agent's certificate; clients that trust
//! that CA get through (the library client and the real `outpostctl`),
//! plain HTTP/2, an unknown CA and a missing --ca-file are refused with
//! errors that say so.

use outpost::client;
use outpost_proto::agent::v1 as pb;
use outpost_tests::*;
use std::path::Path;
use std::process::Command;

#[test]
fn the_api_over_tls_admits_clients_that_trust_the_site_ca_only() {
    let dir = AgentDir::new();
    let pki = tempfile::tempdir().expect("tempdir");
    site_ca(pki.path(), "agent");
    site_ca(pki.path(), "stranger");
    let (text, mqtt, http, api) = dir.config_with(None, "", "");
    let tls = format!(
        "[api]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        pki.path().join("agent.pem").display(),
        pki.path().join("agent.key").display()
    );
    let text = text.replacen("[api]\n", &tls, 1);
    let agent = TestAgent::start_text(&dir, &text, mqtt, http, api);
    let token = client::read_token(&dir.path().join("state/api.token")).expect("token");
    let ca = std::fs::read(pki.path().join("agent-ca.pem")).expect("ca");
    let stranger = std::fs::read(pki.path().join("stranger-ca.pem")).expect("stranger ca");
    let https = format!("https://localhost:{}", agent.api_port);
    client_runtime().block_on(async {
        let mut c = client::connect_with(&https, &token, Some(&ca)).await.expect("TLS with the site CA");
        let list = c.list_services(pb::ListServicesRequest {}).await.expect("list over TLS").into_inner();
        assert!(list.services.is_empty());
        // By address too: the certificate names 127.0.0.1.
        client::connect_with(&format!("https://127.0.0.1:{}", agent.api_port), &token, Some(&ca))
            .await
            .expect("TLS by IP address")
            .list_services(pb::ListServicesRequest {})
            .await
            .expect("list");
        // A certificate from another CA is not trusted.
        let refused = match client::connect_with(&https, &token, Some(&stranger)).await {
            Err(e) => e.to_string(),
            Ok(mut c) => c.list_services(pb::ListServicesRequest {}).await.expect_err("unknown CA").to_string(),
        };
        assert!(!refused.is_empty());
        // Plain HTTP/2 to a TLS port gets nowhere.
        let plain = match client::connect(&format!("http://127.0.0.1:{}", agent.api_port), &token).await {
            Err(e) => e.to_string(),
            Ok(mut c) => c.list_services(pb::ListServicesRequest {}).await.expect_err("plain to TLS").to_string(),
        };
        assert!(!plain.is_empty());
        // https:// without a CA says what to pass.
        let err = client::connect_with(&https, &token, None).await.expect_err("no CA").to_string();
        assert!(err.contains("--ca-file"), "{err}");
    });
    // The real CLI, as an operator would call it.
    let outpostctl = binary("outpostctl");
    let token_file = dir.path().join("state/api.token");
    let run = |ca: &str| {
        Command::new(&outpostctl)
            .args(["--agent", &https, "--token-file"])
            .arg(&token_file)
            .arg("--ca-file")
            .arg(pki.path().join(ca))
            .args(["--json", "list"])
            .output()
            .expect("run outpostctl")
    };
    let ok = run("agent-ca.pem");
    assert!(ok.status.success(), "outpostctl list over TLS: {}", String::from_utf8_lossy(&ok.stderr));
    let bad = run("stranger-ca.pem");
    assert!(!bad.status.success(), "a stranger's CA must not be trusted");
}

#[test]
fn a_tls_certificate_without_its_key_is_refused_at_start() {
    let dir = AgentDir::new();
    let (text, ..) = dir.config_with(None, "", "");
    let text = text.replacen("[api]\n", "[api]\ntls_cert = \"/etc/outpost/api.pem\"\n", 1);
    let err = outpost::config::AgentConfig::parse(&text, Path::new("outpost.toml")).expect_err("half a TLS setup");
    assert!(err.to_string().contains("api.tls_cert and api.tls_key go together"), "{err}");
}
