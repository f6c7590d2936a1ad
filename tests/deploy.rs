//! deploy/: the Kubernetes manifests and the sloguard config they mount agree with each other.
//! A port, path or probe changed on one side and not the other fails here rather than in a
//! cluster, where it would show as a pod that never gets ready or traffic nobody measures.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;
use sloguard::config::{ListenerConfig, Role};
use sloguard::Config;

/// The ConfigMap that carries sloguard's config, as kustomization.yaml generates it.
const CONFIG_MAP: &str = "sloguard-config";
/// The user-created Secret that holds the provider keys.
const KEYS_SECRET: &str = "llm-provider-keys";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every YAML document of every YAML file in deploy/, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            if !value.is_null() {
                docs.push((path.clone(), value));
            }
        }
    }
    docs
}

/// The one document of this kind in deploy/.
fn the(kind: &str) -> Value {
    let mut found: Vec<Value> = documents()
        .into_iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} in deploy/");
    found.remove(0)
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} must be a string, is {v:?}"))
}

fn seq_of<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} must be a list, is {v:?}"))
}

/// The key and file of the ConfigMap generator that carries sloguard's config.
fn config_map_source() -> (String, PathBuf) {
    let kustomization = the("Kustomization");
    let generators = seq_of(&kustomization["configMapGenerator"], "configMapGenerator");
    let generator = generators
        .iter()
        .find(|g| g["name"].as_str() == Some(CONFIG_MAP))
        .unwrap_or_else(|| panic!("no configMapGenerator named {CONFIG_MAP}"));
    let files = seq_of(&generator["files"], "configMapGenerator files");
    assert_eq!(
        files.len(),
        1,
        "{CONFIG_MAP} should carry sloguard's config alone"
    );
    // kustomize takes `key=path` or `path` (the key is then the file's name).
    let entry = str_of(&files[0], "a configMapGenerator file");
    let (key, file) = match entry.split_once('=') {
        Some((key, file)) => (key.to_owned(), file),
        None => (
            Path::new(entry)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            entry,
        ),
    };
    (key, deploy_dir().join(file))
}

/// The config the ConfigMap is generated from, loaded as `sloguard run` loads it.
fn config() -> Config {
    let (_, path) = config_map_source();
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn pod_spec() -> Value {
    the("Deployment")["spec"]["template"]["spec"].clone()
}

/// A long-running container of the pod: under `containers`, or a native sidecar (an init
/// container with `restartPolicy: Always`). A plain init container would have to exit before the
/// others start, which neither the agent nor sloguard ever does.
fn container(pod: &Value, name: &str) -> Value {
    let long_running = pod["containers"].as_sequence().into_iter().flatten().chain(
        pod["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter(|c| c["restartPolicy"].as_str() == Some("Always")),
    );
    let found: Vec<&Value> = long_running
        .filter(|c| c["name"].as_str() == Some(name))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one long-running container named {name} in the pod"
    );
    found[0].clone()
}

/// A port as Kubernetes reads it: a number, or the name of a port of `containers`.
fn resolve_port(port: &Value, containers: &[&Value]) -> u16 {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).unwrap();
    }
    let name = str_of(port, "a port");
    containers
        .iter()
        .flat_map(|c| c["ports"].as_sequence().into_iter().flatten())
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .map(|n| u16::try_from(n).unwrap())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The path and port of one of a container's httpGet probes.
fn http_probe(container: &Value, probe: &str) -> (String, u16) {
    let get = &container[probe]["httpGet"];
    assert!(
        get.is_mapping(),
        "{} needs an httpGet {probe}",
        str_of(&container["name"], "a container name")
    );
    // A probe's named port is one of the probed container's own ports.
    let port = resolve_port(&get["port"], &[container]);
    (str_of(&get["path"], "httpGet.path").to_owned(), port)
}

fn listener(config: &Config, role: Role) -> ListenerConfig {
    let found: Vec<&ListenerConfig> = config.listeners.iter().filter(|l| l.role == role).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {} listener in the config",
        role.as_str()
    );
    found[0].clone()
}

/// sloguard's `--config` argument in the Deployment.
fn config_argument(sloguard: &Value) -> PathBuf {
    let args: Vec<&str> = seq_of(&sloguard["args"], "sloguard's args")
        .iter()
        .map(|a| str_of(a, "an argument"))
        .collect();
    assert_eq!(
        args.first(),
        Some(&"run"),
        "sloguard's args must start with `run`: {args:?}"
    );
    let value = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].to_owned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_owned))
        })
        .unwrap_or_else(|| panic!("sloguard's args give no --config: {args:?}"));
    PathBuf::from(value)
}

/// Where sloguard mounts the pod volume whose `source` (`configMap` or `secret`) is `name`.
fn mount_path_of(pod: &Value, sloguard: &Value, source: &str, name: &str) -> PathBuf {
    let name_key = if source == "secret" {
        "secretName"
    } else {
        "name"
    };
    let volume = seq_of(&pod["volumes"], "volumes")
        .iter()
        .find(|v| v[source][name_key].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {source} volume of {name} in the pod"));
    let volume_name = str_of(&volume["name"], "a volume name");
    let mount = seq_of(&sloguard["volumeMounts"], "sloguard's volumeMounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(volume_name))
        .unwrap_or_else(|| panic!("sloguard does not mount the volume {volume_name}"));
    assert_eq!(
        mount["readOnly"].as_bool(),
        Some(true),
        "{volume_name} should be mounted readOnly"
    );
    PathBuf::from(str_of(&mount["mountPath"], "mountPath"))
}

#[test]
fn every_yaml_in_deploy_parses_and_the_kustomization_lists_every_manifest() {
    let docs = documents();
    let kustomization = the("Kustomization");
    let resources: Vec<PathBuf> = seq_of(&kustomization["resources"], "resources")
        .iter()
        .map(|r| deploy_dir().join(str_of(r, "a resource")))
        .collect();
    for r in &resources {
        assert!(
            r.is_file(),
            "kustomization resource {} does not exist",
            r.display()
        );
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
    for kind in ["Deployment", "Service"] {
        assert!(
            docs.iter().any(|(_, d)| d["kind"].as_str() == Some(kind)),
            "deploy/ has no {kind}"
        );
    }
}

#[test]
fn the_config_map_is_generated_from_the_config_that_loads() {
    let (key, path) = config_map_source();
    assert!(path.is_file(), "{} does not exist", path.display());
    assert_eq!(path, deploy_dir().join("sloguard.yaml"));
    assert_eq!(key, "sloguard.yaml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // The pod this config describes: the agent behind an inbound listener, its LLM calls
    // through an egress listener.
    listener(&config, Role::Agent);
    listener(&config, Role::Llm);
}

#[test]
fn the_agent_is_restarted_through_sloguards_agent_healthz() {
    let config = config();
    let agent = container(&pod_spec(), "agent");
    let (path, port) = http_probe(&agent, "livenessProbe");
    assert_eq!(
        path, "/agent/healthz",
        "the agent's livenessProbe asks sloguard"
    );
    assert_eq!(
        port,
        config.admin.bind.port(),
        "the agent's livenessProbe port is admin.bind's"
    );
    for key in ["periodSeconds", "failureThreshold", "timeoutSeconds"] {
        assert!(
            agent["livenessProbe"][key].as_u64().is_some_and(|n| n > 0),
            "the agent's livenessProbe should set {key}"
        );
    }
}

#[test]
fn sloguards_own_probes_are_on_the_admin_port() {
    let config = config();
    let pod = pod_spec();
    let sloguard = container(&pod, "sloguard");
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

#[test]
fn the_service_sends_clients_through_the_inbound_listener() {
    let config = config();
    let pod = pod_spec();
    let sloguard = container(&pod, "sloguard");
    let agent = container(&pod, "agent");
    let service = the("Service");
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
    let labels = &the("Deployment")["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"]
        .as_mapping()
        .expect("the Service needs a selector");
    assert!(!selector.is_empty(), "the Service's selector is empty");
    for (k, v) in selector {
        assert_eq!(
            &labels[k], v,
            "the pod template lacks the Service's selector label {k:?}"
        );
    }
}

#[test]
fn the_agent_calls_its_llm_through_the_egress_listener() {
    let config = config();
    let agent = container(&pod_spec(), "agent");
    let url = seq_of(&agent["env"], "the agent's env")
        .iter()
        .find(|e| e["name"].as_str() == Some("OPENAI_BASE_URL"))
        .map(|e| str_of(&e["value"], "OPENAI_BASE_URL").to_owned())
        .expect("the agent needs OPENAI_BASE_URL");
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
    let egress = listener(&config, Role::Llm);
    assert_eq!(
        uri.port_u16(),
        Some(egress.bind.port()),
        "{url} must point at the llm listener's port"
    );
    let ip = egress.bind.ip();
    assert!(
        ip.is_loopback() || ip.is_unspecified(),
        "the llm listener binds {ip}, which the agent cannot reach on loopback"
    );
}

#[test]
fn the_pod_outlasts_sloguards_drain() {
    let config = config();
    let grace = pod_spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("the pod should set terminationGracePeriodSeconds");
    // The drain, then the incident queue, then (with `otlp`) the last exports.
    let otlp = if config.otlp.is_some() {
        sloguard::telemetry::otlp::FLUSH
    } else {
        Duration::ZERO
    };
    let stop = config.shutdown.grace_period.0 + sloguard::sidecar::INCIDENT_FLUSH + otlp;
    assert!(
        Duration::from_secs(grace) > stop,
        "terminationGracePeriodSeconds ({grace}) must exceed shutdown.grace_period + the incident and OTLP flushes ({stop:?}), or the kubelet kills sloguard mid-shutdown",
    );
}

#[test]
fn the_config_and_keys_are_mounted_where_sloguard_reads_them() {
    let config = config();
    let pod = pod_spec();
    let sloguard = container(&pod, "sloguard");
    let argument = config_argument(&sloguard);
    let (key, _) = config_map_source();
    let config_dir = mount_path_of(&pod, &sloguard, "configMap", CONFIG_MAP);
    assert_eq!(
        argument.parent(),
        Some(config_dir.as_path()),
        "--config {} is not in the ConfigMap's mount",
        argument.display()
    );
    assert_eq!(
        argument
            .file_name()
            .map(|f| f.to_string_lossy().into_owned()),
        Some(key),
        "--config names a file the ConfigMap does not have"
    );

    let keys_dir = mount_path_of(&pod, &sloguard, "secret", KEYS_SECRET);
    let key_files: Vec<&PathBuf> = config
        .upstreams
        .values()
        .filter_map(|u| u.api_keys_file.as_ref())
        .collect();
    assert!(
        !key_files.is_empty(),
        "the LLM upstreams should take their keys from files"
    );
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    // The admin token too: without it a tripped kill switch could be lifted by a restart only.
    let token = config
        .admin
        .token_file
        .as_ref()
        .expect("admin.token_file is set");
    for file in key_files.into_iter().chain([token]) {
        assert_eq!(
            file.parent(),
            Some(keys_dir.as_path()),
            "api_keys_file {} is not in the {KEYS_SECRET} mount",
            file.display()
        );
        // The Secret's key for this file must be in the documented `kubectl create secret`.
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            readme.contains(&format!("--from-file={name}=")),
            "deploy/README.md does not say to put the key file {name} in the Secret"
        );
    }
}

#[test]
fn the_scrape_annotations_point_at_the_admin_port() {
    let config = config();
    let annotations = &the("Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(config.admin.bind.port().to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
}

#[test]
fn the_image_exposes_the_configs_ports() {
    let config = config();
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let exposed: Vec<u16> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    let wanted = config
        .listeners
        .iter()
        .map(|l| l.bind.port())
        .chain([config.admin.bind.port()]);
    for port in wanted {
        assert!(
            exposed.contains(&port),
            "deploy/Dockerfile does not EXPOSE {port}"
        );
    }
}

/// `sloguard check` builds everything `run` does, key files included; with stand-in key files
/// where the Secret would be mounted (and the admin token), the deploy config passes it.
#[test]
fn sloguard_check_accepts_the_deploy_config() {
    let config = config();
    let (_, path) = config_map_source();
    let dir = std::env::temp_dir().join(format!("sloguard-deploy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut stand_ins = Vec::new();
    for (name, up) in &config.upstreams {
        if let Some(file) = &up.api_keys_file {
            let stand_in = dir.join(format!("{name}.keys"));
            std::fs::write(&stand_in, "sk-test-key\n").unwrap();
            stand_ins.push((file.to_str().unwrap().to_owned(), stand_in));
        }
    }
    if let Some(file) = &config.admin.token_file {
        let stand_in = dir.join("admin-token");
        std::fs::write(&stand_in, "test-token\n").unwrap();
        stand_ins.push((file.to_str().unwrap().to_owned(), stand_in));
    }
    // Line by line, value by value: one key path may be the prefix of another.
    let mut replaced = 0;
    let text: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| {
            let split = ["api_keys_file:", "token_file:"]
                .into_iter()
                .find_map(|key| Some((key, line.split_once(key)?)))
                .filter(|(_, (head, _))| !head.trim_start().starts_with('#'));
            let Some((key, (head, rest))) = split else {
                return format!("{line}\n");
            };
            let value = rest.split('#').next().unwrap_or_default().trim();
            let (_, stand_in) = stand_ins
                .iter()
                .find(|(original, _)| original == value)
                .unwrap_or_else(|| panic!("{key} {value:?} is not one the config loaded"));
            replaced += 1;
            format!("{head}{key} {}\n", stand_in.display())
        })
        .collect();
    assert_eq!(replaced, stand_ins.len(), "every key file line replaced");
    let copy = dir.join("sloguard.yaml");
    std::fs::write(&copy, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sloguard"))
        .args(["check", "--config"])
        .arg(&copy)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
