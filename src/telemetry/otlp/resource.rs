//! The resource this sidecar's telemetry describes: read from the pod's environment, never from
//! requests.

use std::collections::BTreeMap;

/// The Kubernetes Downward API variables read into resource attributes (set them in the pod spec
/// with `fieldRef`; `deploy/` does).
pub const DOWNWARD_API: &[(&str, &str)] = &[
    ("K8S_POD_NAME", "k8s.pod.name"),
    ("K8S_POD_UID", "k8s.pod.uid"),
    ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
    ("K8S_NODE_NAME", "k8s.node.name"),
];

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The resource attributes of this sidecar, from the pod's environment (never from requests):
/// `service.name` `sloguard`, `service.version`, `sloguard.agent`; then the Downward API
/// variables of [`DOWNWARD_API`]; then `OTEL_RESOURCE_ATTRIBUTES` (`key=value,...`,
/// percent-encoded values); then `OTEL_SERVICE_NAME` — each overriding what came before.
pub fn resource_attributes(
    agent: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    attrs.insert("service.name".to_owned(), "sloguard".to_owned());
    attrs.insert(
        "service.version".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    );
    attrs.insert("sloguard.agent".to_owned(), agent.to_owned());
    for (var, key) in DOWNWARD_API {
        if let Some(v) = env(var).filter(|v| !v.is_empty()) {
            attrs.insert((*key).to_owned(), v);
        }
    }
    if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for pair in list.split(',') {
            // A pair without `=` or with an empty key is skipped, as the specification says.
            if let Some((k, v)) = pair.split_once('=') {
                let k = percent_decode(k.trim());
                if !k.is_empty() {
                    attrs.insert(k, percent_decode(v.trim()));
                }
            }
        }
    }
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|v| !v.is_empty()) {
        attrs.insert("service.name".to_owned(), name);
    }
    attrs
}
