#!/usr/bin/env bash
# Validates a FOCUS cost-and-usage CSV (what `GET /v1/usage/export?format=focus` writes) with the
# FinOps Foundation's validator (PyPI focus-validator, pinned in tests/usage/requirements.txt),
# offline: the FOCUS 1.2 rules ship inside the package, remote rule download is blocked, and the
# run is put in a network namespace of its own where `unshare -n` works.
# Usage: tests/usage/focus_check.sh VENV CSV_FILE
#   e.g. PYTHON=/root/.pyenv/versions/3.12.1/bin/python3.12 \
#          tests/clients/setup.sh tests/usage/requirements.txt target/focus-venv
#        tests/usage/focus_check.sh target/focus-venv wattserve-focus.csv
# Exits 0 when no rule fails, 1 when one does (each is listed), 2 on bad usage or a broken venv.
# A rule that fails as one alternative of an OR rule that passes is not a failure (the model states
# InvoiceId-C-004-C "MUST be null" and InvoiceId-C-005-C "MUST NOT be null" without their invoice
# conditions, so one of them always fails while their parent InvoiceId-C-003-C passes).
# FOCUS_VERSION (default 1.2) and FOCUS_CRITERIA (the provider's applicability criteria, comma
# separated; default: those that hold for wattserve) override; FOCUS_REPORT=FILE keeps the JUnit XML.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 VENV CSV_FILE" >&2; exit 2; }
venv="$1"
csv="$2"
[ -d "$venv" ] && venv="$(cd "$venv" && pwd)"  # absolute, links kept: the run changes directory
py="$venv/bin/python"
[ -x "$py" ] || { echo "focus_check: no Python in $venv (make it with tests/clients/setup.sh tests/usage/requirements.txt $venv)" >&2; exit 2; }
[ -f "$csv" ] || { echo "focus_check: no file $csv" >&2; exit 2; }
csv="$(realpath "$csv")"
version="${FOCUS_VERSION:-1.2}"
criteria="${FOCUS_CRITERIA:-ACCOUNT_NAMING_SUPPORTED,USAGE_MEASUREMENT_SUPPORTED,SUB_ACCOUNT_SUPPORTED,BILLING_BASED_ON_PROVISIONED_RESOURCES_SUPPORTED,RESOURCE_TYPE_ASSIGNMENT_SUPPORTED,TAGGING_SUPPORTED}"

pkg="$("$py" -P -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("focus_validator").origin))' 2>/dev/null)" \
  || { echo "focus_check: focus_validator is not installed in $venv" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The validator opens its ISO 4217 list by the relative path focus_validator/rules/currency_codes.csv.
mkdir -p "$work/focus_validator/rules"
ln -s "$pkg/rules/currency_codes.csv" "$work/focus_validator/rules/currency_codes.csv"

isolate=()
if unshare -n true 2>/dev/null; then isolate=(unshare -n); fi

cd "$work"
status=0
env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
  FOCUS_CSV="$csv" FOCUS_VER="$version" FOCUS_AC="$criteria" FOCUS_PKG="$pkg" \
  FOCUS_NET="${isolate[*]:-proxy blocked}" \
  "${isolate[@]}" "$py" -P - <<'EOF' || status=$?
import glob, json, logging, os, sys

logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
from focus_validator.validator import Validator

v = Validator(  # as the CLI's --block-download --applicability-criteria would
    data_filename=os.environ["FOCUS_CSV"],
    output_destination="report.xml",
    output_type="unittest",
    rules_version=os.environ["FOCUS_VER"],
    focus_dataset="CostAndUsage",
    rules_block_remote_download=True,
    applicability_criteria=os.environ["FOCUS_AC"] or None,
)
try:
    results = v.validate()
except Exception as e:  # a broken install or an unreadable file, not a rule failure
    print(f"focus_check: the validator failed: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
model = json.load(open(v.spec_rules.json_rule_file))["ModelRules"]

by_id = results.by_rule_id
failed, passed, skipped, alternatives = [], 0, 0, set()
for rid, e in by_id.items():
    d = e.get("details") or {}
    if d.get("aggregated") == "any" and e.get("ok") and not d.get("skipped"):
        alternatives |= {c.get("referenced_rule_id") for c in d.get("children", []) if not c.get("ok")}
for rid, e in by_id.items():
    d = e.get("details") or {}
    if d.get("skipped"):
        skipped += 1
    elif e.get("ok"):
        passed += 1
    elif rid not in alternatives:
        failed.append(rid)
ignored = sum(1 for rid in alternatives if rid in by_id and not by_id[rid].get("ok"))

for rid in sorted(failed):
    d = by_id[rid].get("details") or {}
    why = d.get("message") or ""
    if d.get("missing_columns"):
        why += " (validator error: missing column %s)" % ", ".join(d["missing_columns"])
    must = model.get(rid, {}).get("ValidationCriteria", {}).get("MustSatisfy", "")
    print(f"FAIL {rid}: {must}\n     {why}")
print(
    f"focus_check: FOCUS {results.rules_version} (model {results.model_version}), "
    f"{results.data_row_count} rows of {os.environ['FOCUS_CSV']}, network: {os.environ['FOCUS_NET']}; "
    f"{len(by_id)} rules: {passed + len(failed)} checked, {skipped} skipped (not applicable or not "
    f"implemented), {ignored} failed alternative(s) of a passed OR ignored"
)
print(f"focus_check: {passed} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
EOF
if [ -n "${FOCUS_REPORT:-}" ] && [ -f "$work/report.xml" ]; then
  cd - >/dev/null
  cp "$work/report.xml" "$FOCUS_REPORT"
fi
exit "$status"
