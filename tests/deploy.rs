//! deploy/: the Kubernetes manifests and the sloguard config they mount agree with each other.
//! A port, path or probe changed on one side and not the other fails here rather than in a
//! cluster, where it would show as a pod that never gets ready or traffic nobody measures.
//!
//! Every kustomization (the base `deploy/kubernetes` and each `deploy/overlays/*`) is rendered
//! with `kubectl kustomize`, and the checks run on what it renders: the pod, the Service, the
//! PodMonitor, and the sloguard config as the ConfigMap carries it. The rendered YAML passes
//! `kubernetes-validate --strict` (Kubernetes' own JSON schemas, 1.29: native sidecars), and the
//! PrometheusRule's spec is `sloguard rules` verbatim and passes `promtool check rules`.
//! scripts/test installs the three tools; a missing one fails the test, naming its install.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use serde_yaml_ng::Value;
use sloguard::config::Role;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
#[path = "common/manifests.rs"]
mod manifests;
#[path = "common/tools.rs"]
mod tools;
use manifests::*;

#[test]
fn every_yaml_in_the_base_parses_and_its_kustomization_lists_every_manifest() {
    let docs = source_documents(&base_dir());
    let kustomization: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"].as_str() == Some("Kustomization"))
        .collect();
    assert_eq!(kustomization.len(), 1, "one kustomization.yaml in the base");
    let resources: Vec<PathBuf> = seq_of(&kustomization[0]["resources"], "resources")
        .iter()
        .map(|r| base_dir().join(str_of(r, "a resource")))
        .collect();
    for r in &resources {
        assert!(
            docs.iter().any(|(path, _)| path == r),
            "kustomization resource {} holds no YAML document",
            r.display()
        );
    }
    // A manifest left out of `resources` would never be applied.
    for (path, doc) in &docs {
        let kind = doc["kind"].as_str();
        if doc["apiVersion"].is_string() && kind.is_some() && kind != Some("Kustomization") {
            assert!(
                resources.contains(path),
                "{} ({}) is not in kustomization.yaml's resources",
                path.display(),
                kind.unwrap_or_default()
            );
        }
    }
    let rendered = Rendered::of(&base_dir());
    for kind in ["Deployment", "Service", "ConfigMap"]
        .into_iter()
        .chain(CUSTOM_KINDS)
    {
        rendered.the(kind);
    }
}

#[test]
fn the_config_map_is_the_sloguard_yaml_beside_the_kustomization_without_a_hash_suffix() {
    for r in Rendered::all() {
        let (name, key) = r.config_source();
        assert_eq!(key, "sloguard.yaml", "{}", r.name());
        let file = r.dir.join("sloguard.yaml");
        assert_eq!(
            r.config_text(),
            std::fs::read_to_string(&file).unwrap(),
            "{}: the ConfigMap does not carry {}",
            r.name(),
            file.display()
        );
        // The generated name is the declared one: no content hash, so that an edit updates the
        // mounted file in place (and sloguard reloads it) instead of rolling the pods.
        if r.dir == base_dir() {
            assert_eq!(name, CONFIG_MAP, "the base's ConfigMap has a hash suffix");
        }
        let hashed = name.rsplit_once('-').is_some_and(|(_, tail)| {
            tail.len() == 10
                && tail
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && tail.chars().any(|c| c.is_ascii_digit())
        });
        assert!(
            !hashed,
            "{}: {name} looks hash-suffixed: set generatorOptions.disableNameSuffixHash",
            r.name()
        );
        // The pod this config describes: the agent behind an inbound listener, its LLM calls
        // through an egress listener.
        let config = r.config();
        listener(&config, Role::Agent);
        listener(&config, Role::Llm);
    }
}

#[test]
fn the_agent_is_restarted_through_sloguards_agent_healthz() {
    for r in Rendered::all() {
        let config = r.config();
        let agent = container(r.pod(), "agent");
        let (path, port) = http_probe(&agent, "livenessProbe");
        assert_eq!(
            path, "/agent/healthz",
            "the agent's livenessProbe asks sloguard"
        );
        assert_eq!(
            port,
            config.admin.bind.port(),
            "{}: the agent's livenessProbe port is admin.bind's",
            r.name()
        );
        for key in ["periodSeconds", "failureThreshold", "timeoutSeconds"] {
            assert!(
                agent["livenessProbe"][key].as_u64().is_some_and(|n| n > 0),
                "the agent's livenessProbe should set {key}"
            );
        }
    }
}

#[test]
fn sloguards_own_probes_are_on_the_admin_port() {
    for r in Rendered::all() {
        let config = r.config();
        let sloguard = container(r.pod(), "sloguard");
        let admin = config.admin.bind.port();
        assert_eq!(
            http_probe(&sloguard, "readinessProbe"),
            ("/readyz".to_owned(), admin)
        );
        assert_eq!(
            http_probe(&sloguard, "livenessProbe"),
            ("/healthz".to_owned(), admin)
        );
        if sloguard["startupProbe"].is_mapping() {
            // The agent starts once this passes: it must mean "listeners bound".
            assert_eq!(
                http_probe(&sloguard, "startupProbe"),
                ("/readyz".to_owned(), admin)
            );
        }
        assert!(
            seq_of(&sloguard["ports"], "sloguard's ports")
                .iter()
                .any(|p| p["containerPort"].as_u64() == Some(u64::from(admin))),
            "sloguard's container should declare the admin port {admin}"
        );
    }
}

#[test]
fn the_service_sends_clients_through_the_inbound_listener() {
    for r in Rendered::all() {
        let config = r.config();
        let sloguard = container(r.pod(), "sloguard");
        let agent = container(r.pod(), "agent");
        let service = r.the("Service");
        let ports = seq_of(&service["spec"]["ports"], "the Service's ports");
        assert!(!ports.is_empty(), "the Service has no ports");
        let inbound = listener(&config, Role::Agent).bind.port();
        let agent_ports: Vec<u64> = agent["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64())
            .collect();
        for p in ports {
            // A named targetPort is looked up in every container of the pod.
            let target = resolve_port(&p["targetPort"], &[&sloguard, &agent]);
            assert_eq!(
                target, inbound,
                "the Service's targetPort must be the inbound listener's port"
            );
            assert!(
                !agent_ports.contains(&u64::from(target)),
                "the Service must not reach the agent's own port: its requests would go unmeasured"
            );
        }
        // A selector that misses the pod's labels sends traffic nowhere.
        assert_selects_the_pod(&r, &service["spec"]["selector"], "the Service");
    }
}

#[test]
fn the_agent_calls_its_llm_through_the_egress_listener() {
    for r in Rendered::all() {
        let config = r.config();
        let agent = container(r.pod(), "agent");
        // OPENAI_BASE_URL, ANTHROPIC_BASE_URL: what the providers' SDKs read.
        let urls: Vec<String> = seq_of(&agent["env"], "the agent's env")
            .iter()
            .filter(|e| e["name"].as_str().is_some_and(|n| n.ends_with("_BASE_URL")))
            .map(|e| str_of(&e["value"], "a base URL").to_owned())
            .collect();
        assert!(
            !urls.is_empty(),
            "{}: the agent needs its SDK's *_BASE_URL pointed at sloguard",
            r.name()
        );
        let egress = listener(&config, Role::Llm);
        for url in urls {
            let uri: http::Uri = url.parse().unwrap();
            assert_eq!(
                uri.scheme_str(),
                Some("http"),
                "{url}: the egress listener speaks plain HTTP"
            );
            let host = uri.host().unwrap().trim_matches(['[', ']']);
            assert!(
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
                "{url}: the egress listener is in the agent's pod, on loopback"
            );
            assert_eq!(
                uri.port_u16(),
                Some(egress.bind.port()),
                "{}: {url} must point at the llm listener's port",
                r.name()
            );
        }
        let ip = egress.bind.ip();
        assert!(
            ip.is_loopback() || ip.is_unspecified(),
            "the llm listener binds {ip}, which the agent cannot reach on loopback"
        );
    }
}

#[test]
fn the_pod_outlasts_the_agents_pre_stop_and_sloguards_drain() {
    for r in Rendered::all() {
        let config = r.config();
        let pod = r.pod();
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("the pod should set terminationGracePeriodSeconds");
        // The agent's preStop sleep (the pod leaving the endpoints), the drain, the incident queue,
        // the last OTLP export: counted whether or not `otlp` is on now, since turning it on is a
        // ConfigMap edit and the grace period is not.
        let pre_stop = Duration::from_secs(pre_stop_sleep(&container(pod, "agent")));
        let stop = pre_stop
            + config.shutdown.grace_period.0
            + sloguard::sidecar::INCIDENT_FLUSH
            + sloguard::telemetry::otlp::FLUSH;
        assert!(
            Duration::from_secs(grace) > stop,
            "{}: terminationGracePeriodSeconds ({grace}) must exceed the agent's preStop sleep + shutdown.grace_period + the incident and OTLP flushes ({stop:?}), or the kubelet kills sloguard mid-shutdown",
            r.name()
        );
        // sloguard is a native sidecar: it gets SIGTERM once the agent has exited, so a preStop
        // of its own would only lengthen the stop.
        let sloguard = container(pod, "sloguard");
        assert_eq!(
            sloguard["restartPolicy"].as_str(),
            Some("Always"),
            "sloguard runs as a native sidecar"
        );
    }
}
