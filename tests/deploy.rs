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

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;
use sloguard::config::{ListenerConfig, Role};
use sloguard::Config;

#[path = "common/tools.rs"]
mod tools;
use tools::{promtool_ok, run_tool, sloguard, with_stand_in_files};

/// The ConfigMap that carries sloguard's config, as the base's kustomization.yaml generates it.
const CONFIG_MAP: &str = "sloguard-config";
/// The oldest Kubernetes the manifests are for: native sidecars are on by default from 1.29.
const KUBERNETES_VERSION: &str = "1.29.0";
/// Custom resources, which Kubernetes' own schemas do not cover; checked here field by field.
const CUSTOM_KINDS: [&str; 2] = ["PodMonitor", "PrometheusRule"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn base_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// The base and every overlay: each a directory with a kustomization.yaml and the sloguard.yaml
/// its ConfigMap is generated from.
fn kustomizations() -> Vec<PathBuf> {
    let mut dirs = vec![base_dir()];
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    overlays.sort();
    assert!(!overlays.is_empty(), "deploy/overlays/ holds no overlay");
    dirs.extend(overlays);
    dirs
}

fn yaml_documents(what: &str, text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every YAML document of every YAML file in `dir`, with the file it came from.
fn source_documents(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            yaml_documents(&path.display().to_string(), &text)
                .into_iter()
                .map(move |d| (path.clone(), d))
        })
        .collect()
}

fn kubectl_missing(e: impl std::fmt::Display) -> String {
    format!(
        "kubectl could not run ({e}): the deploy tests render the manifests with `kubectl kustomize`; install kubectl 1.27 or later (kustomize v5) — scripts/test installs Debian's `kubernetes-client` when kubectl is missing"
    )
}

/// `kubectl kustomize DIR`: what `kubectl apply -k DIR` would send, offline.
fn render_text(dir: &Path) -> String {
    let version = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .unwrap_or_else(|e| panic!("{}", kubectl_missing(e)));
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let kustomize_major = version
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    assert!(
        kustomize_major.is_some_and(|m| m >= 5),
        "kubectl's kustomize is too old for deploy/ (`labels`, inline patches): it needs kustomize v5 (kubectl 1.27 or later); `kubectl version --client` says:\n{version}"
    );
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}", kubectl_missing(e)));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What one kustomization renders, and the sloguard config its ConfigMap carries.
struct Rendered {
    dir: PathBuf,
    docs: Vec<Value>,
}

impl Rendered {
    fn of(dir: &Path) -> Rendered {
        let text = render_text(dir);
        Rendered {
            dir: dir.to_owned(),
            docs: yaml_documents(&format!("kubectl kustomize {}", dir.display()), &text),
        }
    }

    fn all() -> Vec<Rendered> {
        kustomizations().iter().map(|d| Rendered::of(d)).collect()
    }

    fn name(&self) -> String {
        self.dir.strip_prefix(root()).unwrap().display().to_string()
    }

    /// The one rendered resource of this kind.
    fn the(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self
            .docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected exactly one {kind} rendered",
            self.name()
        );
        found[0]
    }

    fn pod(&self) -> &Value {
        &self.the("Deployment")["spec"]["template"]["spec"]
    }

    /// The name of the ConfigMap sloguard's `--config` comes from, and its key.
    fn config_source(&self) -> (String, String) {
        let pod = self.pod();
        let sloguard = container(pod, "sloguard");
        let argument = config_argument(&sloguard);
        let (volume, mount) = mount_of(pod, &sloguard, "configMap");
        assert_eq!(
            argument.parent(),
            Some(Path::new(str_of(&mount["mountPath"], "mountPath"))),
            "{}: --config {} is not in the ConfigMap's mount",
            self.name(),
            argument.display()
        );
        let name = str_of(&volume["configMap"]["name"], "configMap.name").to_owned();
        let key = argument.file_name().unwrap().to_string_lossy().into_owned();
        (name, key)
    }

    /// sloguard's config text, as the ConfigMap mounted at `--config` carries it.
    fn config_text(&self) -> String {
        let (name, key) = self.config_source();
        let config_map = self
            .docs
            .iter()
            .find(|d| d["kind"].as_str() == Some("ConfigMap") && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no ConfigMap {name} rendered", self.name()));
        str_of(
            &config_map["data"][key.as_str()],
            "the config's ConfigMap key",
        )
        .to_owned()
    }

    fn config(&self) -> Config {
        Config::parse(&self.name(), &self.config_text()).unwrap_or_else(|e| panic!("{e}"))
    }
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

/// The one pod volume of this `source` (`configMap` or `secret`) that sloguard mounts, and its
/// mount. Mounted read-only, and whole: a subPath mount is never updated, so neither a config
/// edit nor a rotated key would ever reach sloguard.
fn mount_of(pod: &Value, sloguard: &Value, source: &str) -> (Value, Value) {
    let mounts = seq_of(&sloguard["volumeMounts"], "sloguard's volumeMounts");
    let found: Vec<(Value, Value)> = seq_of(&pod["volumes"], "volumes")
        .iter()
        .filter(|v| v[source].is_mapping())
        .filter_map(|v| {
            let mount = mounts.iter().find(|m| m["name"] == v["name"])?;
            Some((v.clone(), mount.clone()))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected sloguard to mount one {source} volume"
    );
    let (volume, mount) = found.into_iter().next().unwrap();
    let name = str_of(&volume["name"], "a volume name");
    assert_eq!(
        mount["readOnly"].as_bool(),
        Some(true),
        "{name} should be mounted readOnly"
    );
    assert!(
        mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
        "{name} is mounted with subPath, which the kubelet never updates: mount the directory"
    );
    (volume, mount)
}

/// Seconds of the container's preStop sleep (an exec `sleep N` or the `sleep` action), or 0.
fn pre_stop_sleep(container: &Value) -> u64 {
    let pre_stop = &container["lifecycle"]["preStop"];
    if let Some(s) = pre_stop["sleep"]["seconds"].as_u64() {
        return s;
    }
    match pre_stop["exec"]["command"].as_sequence().map(Vec::as_slice) {
        Some([cmd, n]) if cmd.as_str() == Some("sleep") => {
            str_of(n, "the sleep's seconds").parse().unwrap()
        }
        Some(other) => panic!("a preStop the test cannot time: {other:?}"),
        None => 0,
    }
}

/// kubernetes-validate (PyPI) with Kubernetes' JSON schemas bundled: `KUBERNETES_VALIDATE`, as
/// scripts/test sets it, or the venv scripts/test makes.
fn kubernetes_validate() -> PathBuf {
    std::env::var_os("KUBERNETES_VALIDATE").map_or_else(
        || root().join("target/tools/venv/bin/kubernetes-validate"),
        PathBuf::from,
    )
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sloguard-deploy-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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

/// Every label of `selector` is on the pod template, and it is not empty.
fn assert_selects_the_pod(r: &Rendered, selector: &Value, what: &str) {
    let labels = &r.the("Deployment")["spec"]["template"]["metadata"]["labels"];
    let selector = selector
        .as_mapping()
        .unwrap_or_else(|| panic!("{}: {what} needs a selector", r.name()));
    assert!(
        !selector.is_empty(),
        "{}: {what}'s selector is empty",
        r.name()
    );
    for (k, v) in selector {
        assert_eq!(
            &labels[k],
            v,
            "{}: the pod template lacks {what}'s selector label {k:?}",
            r.name()
        );
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

#[test]
fn the_keys_are_mounted_where_sloguard_reads_them_and_the_secret_is_documented() {
    for r in Rendered::all() {
        let config = r.config();
        let pod = r.pod();
        let sloguard = container(pod, "sloguard");
        let (volume, mount) = mount_of(pod, &sloguard, "secret");
        let keys_dir = PathBuf::from(str_of(&mount["mountPath"], "mountPath"));
        let secret = str_of(&volume["secret"]["secretName"], "secretName");
        // Keys never sit in git: the Secret is the user's, not rendered from the repository.
        assert!(
            !r.docs.iter().any(|d| d["kind"].as_str() == Some("Secret")),
            "{}: a Secret is rendered from files in git",
            r.name()
        );
        assert_ne!(
            volume["secret"]["optional"].as_bool(),
            Some(true),
            "{}: without its keys sloguard cannot start: the Secret must not be optional",
            r.name()
        );
        let key_files: Vec<&PathBuf> = config
            .upstreams
            .values()
            .filter_map(|u| u.api_keys_file.as_ref())
            .collect();
        assert!(
            !key_files.is_empty(),
            "the LLM upstreams should take their keys from files"
        );
        // Where the user is told to create the Secret: deploy/README.md for the base, the
        // overlay's kustomization.yaml for an overlay.
        let docs = [
            root().join("deploy/README.md"),
            r.dir.join("kustomization.yaml"),
        ]
        .map(|p| std::fs::read_to_string(p).unwrap())
        .join("\n");
        assert!(
            docs.contains(&format!("kubectl create secret generic {secret}")),
            "{}: no `kubectl create secret generic {secret}` in deploy/README.md or the kustomization",
            r.name()
        );
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
                "{}: {} is not in the {secret} mount",
                r.name(),
                file.display()
            );
            let name = file.file_name().unwrap().to_string_lossy();
            assert!(
                docs.contains(&format!("--from-file={name}=")),
                "{}: the docs do not say to put the key file {name} in the Secret",
                r.name()
            );
        }
    }
}

#[test]
fn sloguard_runs_restricted_within_measured_resources() {
    for r in Rendered::all() {
        let config = r.config();
        let pod = r.pod();
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault")
        );
        for name in ["sloguard", "agent"] {
            let security = &container(pod, name)["securityContext"];
            assert_eq!(
                security["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{name}"
            );
            assert_eq!(
                security["capabilities"]["drop"],
                serde_yaml_ng::from_str::<Value>("[ALL]").unwrap(),
                "{name} drops every capability"
            );
        }
        let sloguard = container(pod, "sloguard");
        assert_eq!(
            sloguard["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true)
        );
        let resources = &sloguard["resources"];
        for key in ["requests", "limits"] {
            for what in ["cpu", "memory"] {
                assert!(
                    resources[key][what].is_string(),
                    "{}: sloguard's resources should set {key}.{what}",
                    r.name()
                );
            }
        }
        // The body budget must fit the limit with room for what it does not count (the bench
        // measured 153 MiB peak RSS at a 128 MiB budget).
        let limit = str_of(&resources["limits"]["memory"], "limits.memory");
        let limit_bytes: u64 = limit
            .strip_suffix("Mi")
            .map(|n| n.parse::<u64>().unwrap() << 20)
            .unwrap_or_else(|| panic!("limits.memory in Mi expected, is {limit}"));
        assert!(
            config.memory.max_held.0 <= limit_bytes / 2,
            "{}: memory.max_held should be at most half of sloguard's memory limit ({limit})",
            r.name()
        );
    }
}

#[test]
fn prometheus_scrapes_the_admin_port() {
    for r in Rendered::all() {
        let config = r.config();
        let admin = config.admin.bind.port();
        let annotations = &r.the("Deployment")["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(admin.to_string().as_str())
        );
        assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

        let monitor = r.the("PodMonitor");
        assert_eq!(
            monitor["apiVersion"].as_str(),
            Some("monitoring.coreos.com/v1")
        );
        assert_selects_the_pod(
            &r,
            &monitor["spec"]["selector"]["matchLabels"],
            "the PodMonitor",
        );
        let endpoints = seq_of(
            &monitor["spec"]["podMetricsEndpoints"],
            "podMetricsEndpoints",
        );
        assert_eq!(endpoints.len(), 1, "{}", r.name());
        let sloguard = container(r.pod(), "sloguard");
        // The Operator finds the port by its name on the pod's containers.
        assert_eq!(
            resolve_port(&endpoints[0]["port"], &[&sloguard]),
            admin,
            "{}: the PodMonitor's port is not sloguard's admin port",
            r.name()
        );
        assert_eq!(endpoints[0]["path"].as_str(), Some("/metrics"));
    }
}

#[test]
fn the_image_exposes_the_configs_ports() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let exposed: Vec<u16> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    for r in Rendered::all() {
        let config = r.config();
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
        // The image's default command reads the config where the pod mounts it.
        let sloguard = container(r.pod(), "sloguard");
        let argument = config_argument(&sloguard);
        assert!(
            dockerfile.contains(&format!("\"{}\"", argument.display())),
            "deploy/Dockerfile's CMD should name {}",
            argument.display()
        );
    }
}

/// `sloguard check` builds everything `run` does, key files included; with stand-in key files
/// where the Secret would be mounted (and the admin token), each deploy config passes it.
#[test]
fn sloguard_check_accepts_the_deploy_configs() {
    for r in Rendered::all() {
        let config = r.config();
        let dir = temp_dir("check");
        let copy = with_stand_in_files(&config, &r.config_text(), &dir);
        let out = sloguard(&["check"], &copy);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            r.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The PrometheusRule's `spec` is what `sloguard rules` prints for the config beside it (so the
/// alerts Prometheus runs are the SLOs the sidecar serves), and promtool accepts it.
#[test]
fn the_prometheus_rule_is_sloguard_rules_of_the_config() {
    for r in Rendered::all() {
        let rule = r.the("PrometheusRule");
        assert_eq!(
            rule["apiVersion"].as_str(),
            Some("monitoring.coreos.com/v1")
        );
        let config = r.dir.join("sloguard.yaml");
        let out = sloguard(&["rules"], &config);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let generated: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
        assert!(
            rule["spec"] == generated,
            "{}: the PrometheusRule's spec is not `sloguard rules --config {}`: regenerate it with `bash deploy/rules.sh` and review the diff",
            r.name(),
            config.display()
        );
        let groups = seq_of(&generated["groups"], "groups");
        assert!(!groups.is_empty(), "{}: no rules", r.name());

        let dir = temp_dir("rules");
        let file = dir.join("spec.yaml");
        std::fs::write(&file, serde_yaml_ng::to_string(&rule["spec"]).unwrap()).unwrap();
        promtool_ok(&["check", "rules", file.to_str().unwrap()], &r.name());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The rendered YAML against Kubernetes' own schemas, strictly (an unknown or misplaced field is
/// an error), as of 1.29. The custom resources have no schema there: the tests above check them.
#[test]
fn the_rendered_manifests_pass_the_kubernetes_schemas() {
    let validate = kubernetes_validate();
    for dir in kustomizations() {
        let text = render_text(&dir);
        let scratch = temp_dir("schema");
        let file = scratch.join("rendered.yaml");
        std::fs::write(&file, &text).unwrap();
        let out = run_tool(
            &validate,
            &[
                "--strict",
                "--kubernetes-version",
                KUBERNETES_VERSION,
                file.to_str().unwrap(),
            ],
            "install it with `python3 -m venv target/tools/venv && target/tools/venv/bin/pip install kubernetes-validate==1.37.0`, or set KUBERNETES_VALIDATE to its path",
        );
        std::fs::remove_dir_all(&scratch).unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{}: kubernetes-validate --strict -k {KUBERNETES_VERSION}:\n{report}",
            dir.display()
        );
        // A schema it lacks is only a warning: only the custom resources may lack one, and every
        // other resource must have passed.
        for line in report
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
        {
            assert!(
                CUSTOM_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("kind {k} "))),
                "{}: {line}",
                dir.display()
            );
        }
        let docs = yaml_documents("rendered", &text);
        let passed = report
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(
            passed,
            docs.len() - CUSTOM_KINDS.len(),
            "{}: not every built-in resource was validated:\n{report}",
            dir.display()
        );
    }
}
