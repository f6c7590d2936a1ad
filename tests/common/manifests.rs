//! The fixtures of the deploy/ tests (`tests/deploy.rs`, `tests/deploy_pod.rs`): rendering each
//! kustomization, and reading the pod, its containers, probes and mounts out of what it renders.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;
use sloguard::config::{ListenerConfig, Role};
use sloguard::Config;

/// The ConfigMap that carries sloguard's config, as the base's kustomization.yaml generates it.
pub const CONFIG_MAP: &str = "sloguard-config";
/// The oldest Kubernetes the manifests are for: native sidecars are on by default from 1.29.
pub const KUBERNETES_VERSION: &str = "1.29.0";
/// Custom resources, which Kubernetes' own schemas do not cover; checked here field by field.
pub const CUSTOM_KINDS: [&str; 2] = ["PodMonitor", "PrometheusRule"];

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn base_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// The base and every overlay: each a directory with a kustomization.yaml and the sloguard.yaml
/// its ConfigMap is generated from.
pub fn kustomizations() -> Vec<PathBuf> {
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

pub fn yaml_documents(what: &str, text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every YAML document of every YAML file in `dir`, with the file it came from.
pub fn source_documents(dir: &Path) -> Vec<(PathBuf, Value)> {
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

pub fn kubectl_missing(e: impl std::fmt::Display) -> String {
    format!(
        "kubectl could not run ({e}): the deploy tests render the manifests with `kubectl kustomize`; install kubectl 1.27 or later (kustomize v5) — scripts/test installs Debian's `kubernetes-client` when kubectl is missing"
    )
}

/// `kubectl kustomize DIR`: what `kubectl apply -k DIR` would send, offline.
pub fn render_text(dir: &Path) -> String {
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
pub struct Rendered {
    pub dir: PathBuf,
    pub docs: Vec<Value>,
}

impl Rendered {
    pub fn of(dir: &Path) -> Rendered {
        let text = render_text(dir);
        Rendered {
            dir: dir.to_owned(),
            docs: yaml_documents(&format!("kubectl kustomize {}", dir.display()), &text),
        }
    }

    pub fn all() -> Vec<Rendered> {
        kustomizations().iter().map(|d| Rendered::of(d)).collect()
    }

    pub fn name(&self) -> String {
        self.dir.strip_prefix(root()).unwrap().display().to_string()
    }

    /// The one rendered resource of this kind.
    pub fn the(&self, kind: &str) -> &Value {
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

    pub fn pod(&self) -> &Value {
        &self.the("Deployment")["spec"]["template"]["spec"]
    }

    /// The name of the ConfigMap sloguard's `--config` comes from, and its key.
    pub fn config_source(&self) -> (String, String) {
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
    pub fn config_text(&self) -> String {
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

    pub fn config(&self) -> Config {
        Config::parse(&self.name(), &self.config_text()).unwrap_or_else(|e| panic!("{e}"))
    }
}

pub fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} must be a string, is {v:?}"))
}

pub fn seq_of<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} must be a list, is {v:?}"))
}

/// A long-running container of the pod: under `containers`, or a native sidecar (an init
/// container with `restartPolicy: Always`). A plain init container would have to exit before the
/// others start, which neither the agent nor sloguard ever does.
pub fn container(pod: &Value, name: &str) -> Value {
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
pub fn resolve_port(port: &Value, containers: &[&Value]) -> u16 {
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
pub fn http_probe(container: &Value, probe: &str) -> (String, u16) {
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

pub fn listener(config: &Config, role: Role) -> ListenerConfig {
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
pub fn config_argument(sloguard: &Value) -> PathBuf {
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
pub fn mount_of(pod: &Value, sloguard: &Value, source: &str) -> (Value, Value) {
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
pub fn pre_stop_sleep(container: &Value) -> u64 {
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
pub fn kubernetes_validate() -> PathBuf {
    std::env::var_os("KUBERNETES_VALIDATE").map_or_else(
        || root().join("target/tools/venv/bin/kubernetes-validate"),
        PathBuf::from,
    )
}

pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sloguard-deploy-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every label of `selector` is on the pod template, and it is not empty.
pub fn assert_selects_the_pod(r: &Rendered, selector: &Value, what: &str) {
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
