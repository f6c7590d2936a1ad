//! deploy/: the pod as it runs — its keys, its security context and resources, its scrape, its
//! image, the configs it mounts (checked by `sloguard check`), the PrometheusRule it carries, and
//! the rendered manifests against Kubernetes' own schemas. Fixtures shared with `tests/deploy.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use serde_yaml_ng::Value;
use std::path::PathBuf;
#[path = "common/tools.rs"]
mod tools;
use tools::{promtool_ok, run_tool, sloguard, with_stand_in_files};
#[path = "common/manifests.rs"]
mod manifests;
use manifests::*;

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
