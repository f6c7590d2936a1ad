#!/usr/bin/env bash
# Regenerates the PrometheusRule beside each sloguard.yaml under deploy/ (the base and every
# overlay): its `spec` becomes `sloguard rules --config sloguard.yaml`, verbatim; the lines up to
# `spec:` (apiVersion, kind, metadata, comments) are kept. tests/deploy.rs checks the result.
#
#   bash deploy/rules.sh      # SLOGUARD=path/to/sloguard to use that binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."
sloguard=${SLOGUARD:-}
if [ -z "$sloguard" ]; then
    cargo build -q --bin sloguard
    sloguard=target/debug/sloguard
fi
for rule in deploy/kubernetes/prometheusrule.yaml deploy/overlays/*/prometheusrule.yaml; do
    [ -f "$rule" ] || continue
    dir=$(dirname "$rule")
    # Indent every non-empty line by two under `spec:`; the block scalars stay block scalars.
    { sed '/^spec:/q' "$rule"; "$sloguard" rules --config "$dir/sloguard.yaml" | sed 's/^./  &/'; } >"$rule.new"
    mv "$rule.new" "$rule"
    echo "$rule"
done
