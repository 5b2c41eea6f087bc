#!/usr/bin/env python3
"""Offline checks of the Kubernetes and KServe manifests (`make check-k8s`). No cluster is contacted.

1. Renders deploy/k8s/overlays/cpu, deploy/k8s/overlays/gpu and deploy/k8s/prometheus-adapter with
   `kubectl kustomize` (kustomize v5; tests/deploy/kubectl.sh provides it); any warning fails.
2. Validates every rendered object of a built-in kind, and the containers of the KServe manifests
   (as a Pod), against the Kubernetes OpenAPI schemas of each version in KUBE_VERSIONS, strictly
   (an unknown field fails), with kubernetes-validate (schemas bundled: offline).
3. Checks the custom resources that no bundled schema covers: ServiceMonitor (Prometheus Operator)
   by a structural check written here (required fields, known endpoint fields, duration syntax);
   ServingRuntime and InferenceService (KServe) likewise here, and against KServe's own resource
   models by tests/deploy/check_kserve.py (run by `make check-k8s` with target/v2-venv).
4. Cross-checks what no schema can: selectors against pod labels, named ports, probes, the
   ConfigMap's wattserve.toml against the keys documented in docs/configuration.md, the API keys
   file's syntax, flags against ports and mounts, the shutdown timeline against
   terminationGracePeriodSeconds, the HPA's metric against prometheus-adapter's rules and
   src/metrics.rs, and what distinguishes the gpu overlay from the cpu one.

Usage: check_k8s.py --kubectl PATH   (from the repository root; run with target/deploy-venv's python)
"""

from __future__ import annotations

import argparse
import base64
import glob
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

KUBE_VERSIONS = ["1.29.0", "1.37.0"]
OVERLAYS = ["deploy/k8s/overlays/cpu", "deploy/k8s/overlays/gpu"]
ADAPTER = "deploy/k8s/prometheus-adapter"
KSERVE_GLOB = "deploy/kserve/*.yaml"
CRD_GROUPS = ("monitoring.coreos.com/", "serving.kserve.io/")
# Prometheus Operator's Duration pattern (monitoring.coreos.com/v1).
DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
# A Kubernetes resource quantity (the bundled schemas accept any string for one).
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+)?$")
SHUTDOWN_GRACE_DEFAULT_S = 30.0  # server.shutdown_grace_s (docs/configuration.md)
EXIT_MARGIN_S = 1.0  # the process exits within the grace plus about a second


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def ok(self, cond: bool, what: str) -> bool:
        if cond:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"FAIL {what}")
        return cond


C = Checks()


def render(kubectl: str, directory: str) -> list[dict]:
    proc = subprocess.run(
        [kubectl, "kustomize", directory], capture_output=True, text=True, check=False
    )
    C.ok(proc.returncode == 0, f"{directory}: kubectl kustomize failed: {proc.stderr.strip()}")
    C.ok(not proc.stderr.strip(), f"{directory}: kustomize warned: {proc.stderr.strip()}")
    return [o for o in yaml.safe_load_all(proc.stdout) if o]


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def validate_builtin(obj: dict, where: str) -> None:
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            C.ok(True, "")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            C.ok(False, f"{where}: {name_of(obj)} invalid for Kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            C.ok(False, f"{where}: {name_of(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {version}")


def check_quantities(node: object, where: str, path: str = "") -> None:
    """Every resources.requests/limits value and emptyDir sizeLimit is a valid quantity."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else k
            if k in ("requests", "limits") and path.endswith("resources") and isinstance(v, dict):
                for r, q in v.items():
                    C.ok(QUANTITY.match(str(q)) is not None, f"{where}: {p}.{r}: {q!r} is not a quantity")
            elif k == "sizeLimit":
                C.ok(QUANTITY.match(str(v)) is not None, f"{where}: {p}: {v!r} is not a quantity")
            else:
                check_quantities(v, where, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_quantities(v, where, f"{path}[{i}]")


def one(objs: list[dict], kind: str, where: str) -> dict:
    found = [o for o in objs if o.get("kind") == kind]
    C.ok(len(found) == 1, f"{where}: expected one {kind}, found {len(found)}")
    return found[0] if found else {}


def subset(small: dict, big: dict) -> bool:
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def documented_config_keys() -> set[str]:
    """section.key for every key of the TOML block of docs/configuration.md, commented ones too."""
    text = Path("docs/configuration.md").read_text()
    block = re.search(r"## The config file.*?```toml\n(.*?)```", text, re.S)
    assert block, "docs/configuration.md has no ```toml block under '## The config file'"
    keys, section = set(), ""
    for line in block.group(1).splitlines():
        if m := re.match(r"^\[([a-z_]+)\]", line):
            section = m.group(1)
        elif m := re.match(r"^#?\s*([a-z_]+)\s*=", line):
            keys.add(f"{section}.{m.group(1)}")
    return keys


def flags(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def check_keys_file(text: str, where: str) -> None:
    """The syntax src/governance/keys.rs accepts: `NAME SHA256-HEX`, # comments, blank lines."""
    entries = 0
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        C.ok(
            len(fields) == 2
            and re.fullmatch(r"[A-Za-z0-9._-]+", fields[0]) is not None
            and re.fullmatch(r"[0-9a-fA-F]{64}", fields[1]) is not None,
            f"{where}: API keys file line {i} is not `NAME SHA256-HEX`: {raw!r}",
        )
        entries += 1
    C.ok(entries > 0, f"{where}: the API keys file holds no key (the server would refuse to start)")


def prestop_sleep(container: dict) -> float:
    cmd = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(cmd) == 2 and cmd[0] == "sleep":
        return float(cmd[1])
    return 0.0


def check_workload(objs: list[dict], where: str, adapter_metrics: set[str], gpu: bool) -> None:
    dep = one(objs, "Deployment", where)
    svc = one(objs, "Service", where)
    hpa = one(objs, "HorizontalPodAutoscaler", where)
    pdb = one(objs, "PodDisruptionBudget", where)
    netpol = one(objs, "NetworkPolicy", where)
    smon = one(objs, "ServiceMonitor", where)
    if not dep:
        return
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    spec = pod["spec"]
    main = next((c for c in spec["containers"] if c["name"] == "wattserve"), None)
    if not C.ok(main is not None, f"{where}: no container named wattserve"):
        return
    ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
    f = flags(main.get("args", []))

    # Selectors.
    C.ok(subset(dep["spec"]["selector"]["matchLabels"], pod_labels), f"{where}: Deployment selector does not match its pod labels")
    C.ok(subset(svc["spec"].get("selector", {}), pod_labels), f"{where}: Service selector does not match the pod labels")
    C.ok(subset(pdb["spec"]["selector"].get("matchLabels", {}), pod_labels), f"{where}: PodDisruptionBudget selector does not match the pod labels")
    C.ok(subset(netpol["spec"]["podSelector"].get("matchLabels", {}), pod_labels), f"{where}: NetworkPolicy podSelector does not match the pod labels")
    C.ok(subset(smon.get("spec", {}).get("selector", {}).get("matchLabels", {}), svc["metadata"].get("labels", {})), f"{where}: ServiceMonitor selector does not match the Service's labels")
    C.ok(smon.get("metadata", {}).get("namespace") == svc["metadata"].get("namespace"), f"{where}: ServiceMonitor and Service are in different namespaces (no namespaceSelector)")

    # Ports: Service, ServiceMonitor, NetworkPolicy, probes, flags, config.
    for p in svc["spec"]["ports"]:
        t = p.get("targetPort")
        C.ok(t in ports or t in ports.values(), f"{where}: Service port {p['name']} targets {t!r}, not a port of the container")
    svc_port_names = {p["name"] for p in svc["spec"]["ports"]}
    for e in smon.get("spec", {}).get("endpoints", []):
        C.ok(e.get("port") in svc_port_names, f"{where}: ServiceMonitor endpoint port {e.get('port')!r} is not a Service port name")
    for rule in netpol["spec"].get("ingress", []):
        for p in rule.get("ports", []):
            C.ok(p.get("port") in ports or p.get("port") in ports.values(), f"{where}: NetworkPolicy port {p.get('port')!r} is not a container port")
    C.ok(f.get("host") == "0.0.0.0", f"{where}: the server must listen on 0.0.0.0 (--host)")
    C.ok(str(ports.get("http")) == f.get("port"), f"{where}: --port {f.get('port')} is not the container port `http` ({ports.get('http')})")
    C.ok(str(ports.get("grpc")) == f.get("grpc-port"), f"{where}: --grpc-port {f.get('grpc-port')} is not the container port `grpc` ({ports.get('grpc')})")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        g = main.get(probe, {}).get("httpGet", {})
        C.ok(g.get("path") == path and g.get("port") in ("http", ports.get("http")), f"{where}: {probe} must be GET {path} on the http port, is {g}")

    # Mounts: config, keys, models.
    mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}

    def mounted_file(path: str, kind: str) -> str | None:
        """The content of `path` if a ConfigMap/Secret volume provides it."""
        d, fname = path.rsplit("/", 1)
        vol = volumes.get(mounts.get(d, ""), {})
        ref = (vol.get("configMap") or {}).get("name") if kind == "ConfigMap" else (vol.get("secret") or {}).get("secretName")
        obj = next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == ref), None)
        if not C.ok(obj is not None, f"{where}: {path} is not provided by a mounted {kind}"):
            return None
        if kind == "ConfigMap":
            data = obj.get("data", {}).get(fname)
        else:
            data = obj.get("data", {}).get(fname)
            data = base64.b64decode(data).decode() if data is not None else None
        C.ok(data is not None, f"{where}: {kind} {ref} has no key {fname} for {path}")
        return data

    config_text = mounted_file(f.get("config", "/missing/wattserve.toml"), "ConfigMap")
    config = {}
    if config_text is not None:
        try:
            config = tomllib.loads(config_text)
        except tomllib.TOMLDecodeError as e:
            C.ok(False, f"{where}: wattserve.toml does not parse: {e}")
        documented = documented_config_keys()
        for section, table in config.items():
            for key in table if isinstance(table, dict) else []:
                C.ok(f"{section}.{key}" in documented, f"{where}: wattserve.toml sets {section}.{key}, which docs/configuration.md does not document")
        for key in ("host", "port", "grpc_port", "models_dir"):
            C.ok(key not in config.get("server", {}), f"{where}: wattserve.toml sets server.{key}; the Deployment's flags own it (they win over the file)")
    server = config.get("server", {})
    auth = config.get("auth", {})
    metrics_port = server.get("metrics_port")
    C.ok(metrics_port is not None and ports.get("metrics") == metrics_port, f"{where}: server.metrics_port {metrics_port} is not the container port `metrics` ({ports.get('metrics')})")
    if "keys_file" in auth:
        keys = mounted_file(auth["keys_file"], "Secret")
        if keys is not None:
            check_keys_file(keys, where)
        open_paths = auth.get("open_paths", ["/health", "/ready"])
        C.ok({"/health", "/ready"} <= set(open_paths), f"{where}: with API keys, auth.open_paths must keep /health and /ready open for the probes")
    models_dir = f.get("models-dir", "")
    C.ok(models_dir in mounts, f"{where}: --models-dir {models_dir} is not a volume mount")

    # Init containers fill the models volume.
    inits = {c["name"]: c for c in spec.get("initContainers", [])}
    for name in ("models-copy", "models-fetch"):
        c = inits.get(name)
        if C.ok(c is not None, f"{where}: no init container {name}"):
            cm = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            C.ok(cm.get(models_dir) == mounts.get(models_dir), f"{where}: init container {name} does not mount the models volume at {models_dir}")
    fetch = inits.get("models-fetch", {})
    C.ok(f"{models_dir}/fetch.sh" in fetch.get("command", []), f"{where}: models-fetch does not run {models_dir}/fetch.sh")

    # Shutdown: preStop + grace + exit < terminationGracePeriodSeconds.
    grace = float(server.get("shutdown_grace_s", SHUTDOWN_GRACE_DEFAULT_S))
    sleep_s = prestop_sleep(main)
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    C.ok(sleep_s > 0, f"{where}: the wattserve container has no preStop sleep")
    C.ok(sleep_s + grace + EXIT_MARGIN_S < tgps, f"{where}: preStop {sleep_s} s + shutdown_grace_s {grace} s + {EXIT_MARGIN_S} s >= terminationGracePeriodSeconds {tgps}")

    # Security and resources of every container.
    C.ok(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot is not true")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        C.ok(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False, f"{where}: container {c['name']} is not read-only / no privilege escalation")
        C.ok("requests" in c.get("resources", {}) and "limits" in c.get("resources", {}), f"{where}: container {c['name']} lacks resource requests or limits")
        C.ok(c.get("image") != "wattserve", f"{where}: container {c['name']} still has the placeholder image `wattserve` (the overlay's images: must name it)")
    for e in main.get("env", []):
        ref = e.get("valueFrom", {}).get("resourceFieldRef")
        if ref:
            C.ok(ref.get("containerName") == main["name"], f"{where}: env {e['name']} refers to container {ref.get('containerName')}")

    # Autoscaling.
    ref = hpa["spec"]["scaleTargetRef"]
    C.ok((ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"]), f"{where}: the HPA does not target the Deployment ({ref})")
    metrics_rs = Path("src/metrics.rs").read_text()
    for m in hpa["spec"].get("metrics", []):
        if m["type"] == "Pods":
            name = m["pods"]["metric"]["name"]
            C.ok(name in adapter_metrics, f"{where}: HPA metric {name} is not served by a prometheus-adapter rule in {ADAPTER}")
            C.ok(f'"{name}"' in metrics_rs, f"{where}: HPA metric {name} is not a metric of src/metrics.rs")
    C.ok(hpa["spec"].get("minReplicas", 1) >= 2, f"{where}: HPA minReplicas below 2 leaves the PodDisruptionBudget nothing to keep")

    # cpu vs gpu.
    limits = main.get("resources", {}).get("limits", {})
    models_copy_env = {e["name"]: e.get("value") for e in inits.get("models-copy", {}).get("env", [])}
    if gpu:
        C.ok("nvidia.com/gpu" in limits, f"{where}: no nvidia.com/gpu limit")
        C.ok("cuda" in main.get("image", ""), f"{where}: the image {main.get('image')} is not a CUDA image")
        C.ok(models_copy_env.get("MODEL_DEVICE") == "cuda", f"{where}: models-copy does not set MODEL_DEVICE=cuda (the models would stay on the CPU)")
        C.ok(any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])), f"{where}: no toleration for nvidia.com/gpu")
        C.ok(bool(spec.get("nodeSelector")), f"{where}: no nodeSelector for GPU nodes")
    else:
        C.ok("nvidia.com/gpu" not in limits and "cuda" not in main.get("image", ""), f"{where}: GPU settings in a CPU overlay")
        C.ok("MODEL_DEVICE" not in models_copy_env, f"{where}: MODEL_DEVICE set in a CPU overlay")


def check_servicemonitor(obj: dict, where: str) -> None:
    """Structural check (no bundled schema for monitoring.coreos.com/v1)."""
    C.ok(obj.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: {name_of(obj)}: apiVersion must be monitoring.coreos.com/v1")
    C.ok(set(obj) <= {"apiVersion", "kind", "metadata", "spec"}, f"{where}: {name_of(obj)}: unknown top-level fields {set(obj) - {'apiVersion', 'kind', 'metadata', 'spec'}}")
    C.ok(bool(obj.get("metadata", {}).get("name")), f"{where}: ServiceMonitor without a name")
    spec = obj.get("spec", {})
    known_spec = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels", "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit", "attachMetadata", "scrapeProtocols", "scrapeClass", "keepDroppedTargets", "bodySizeLimit", "fallbackScrapeProtocol", "selectorMechanism", "serviceDiscoveryRole", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor", "scrapeClassicHistograms", "convertClassicHistogramsToNHCB"}
    C.ok(set(spec) <= known_spec, f"{where}: ServiceMonitor: unknown spec fields {set(spec) - known_spec}")
    sel = spec.get("selector")
    C.ok(isinstance(sel, dict) and set(sel) <= {"matchLabels", "matchExpressions"} and all(isinstance(k, str) and isinstance(v, str) for k, v in sel.get("matchLabels", {}).items()), f"{where}: ServiceMonitor spec.selector must be a label selector")
    eps = spec.get("endpoints")
    C.ok(isinstance(eps, list) and len(eps) > 0, f"{where}: ServiceMonitor has no endpoints")
    known_ep = {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "honorLabels", "honorTimestamps", "trackTimestampsStaleness", "relabelings", "metricRelabelings", "authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "oauth2", "tlsConfig", "followRedirects", "enableHttp2", "filterRunning", "proxyUrl", "noProxy", "proxyFromEnvironment", "proxyConnectHeader"}
    for e in eps or []:
        C.ok(set(e) <= known_ep, f"{where}: ServiceMonitor endpoint: unknown fields {set(e) - known_ep}")
        C.ok("port" in e or "targetPort" in e, f"{where}: ServiceMonitor endpoint names no port")
        for k in ("interval", "scrapeTimeout"):
            if k in e:
                C.ok(isinstance(e[k], str) and DURATION.match(e[k]) is not None, f"{where}: ServiceMonitor endpoint {k} {e[k]!r} is not a duration")
        C.ok(e.get("scheme", "http") in ("http", "https"), f"{where}: ServiceMonitor endpoint scheme {e.get('scheme')!r}")
        C.ok(str(e.get("path", "/metrics")).startswith("/"), f"{where}: ServiceMonitor endpoint path must start with /")


def adapter_rules(objs: list[dict]) -> set[str]:
    """The metric names prometheus-adapter serves, after checking each rule's shape."""
    names: set[str] = set()
    cm = one(objs, "ConfigMap", ADAPTER)
    if not cm:
        return names
    try:
        config = yaml.safe_load(cm.get("data", {}).get("config.yaml", ""))
    except yaml.YAMLError as e:
        C.ok(False, f"{ADAPTER}: config.yaml does not parse: {e}")
        return names
    rules = (config or {}).get("rules", [])
    C.ok(len(rules) > 0, f"{ADAPTER}: no rules")
    for r in rules:
        where = f"{ADAPTER}: rule {r.get('seriesQuery')!r}"
        C.ok(set(r) <= {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}, f"{where}: unknown fields")
        C.ok(isinstance(r.get("seriesQuery"), str), f"{where}: no seriesQuery")
        ov = r.get("resources", {}).get("overrides", {})
        C.ok(ov.get("namespace", {}).get("resource") == "namespace" and ov.get("pod", {}).get("resource") == "pod", f"{where}: namespace and pod labels must map to the namespace and pod resources (a Pods metric)")
        mq = r.get("metricsQuery", "")
        C.ok(all(t in mq for t in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>")), f"{where}: metricsQuery must use <<.Series>>, <<.LabelMatchers>> and <<.GroupBy>>")
        n = r.get("name", {})
        series = re.match(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", r.get("seriesQuery", ""))
        matches = n.get("matches", "")
        C.ok(series is not None and re.search(matches, series.group(1)) is not None, f"{where}: name.matches {matches!r} does not match the series")
        names.add(n.get("as") or (series.group(1) if series else ""))
    return names


def check_kserve(path: str) -> None:
    """KServe manifests: the Kubernetes parts against the schemas, the rest by hand."""
    objs = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
    runtimes = {}
    for p in glob.glob(KSERVE_GLOB):
        for o in yaml.safe_load_all(Path(p).read_text()):
            if o and o.get("kind") == "ServingRuntime":
                runtimes[o["metadata"]["name"]] = o
    for obj in objs:
        where = f"{path}: {name_of(obj)}"
        C.ok(bool(obj.get("metadata", {}).get("name")), f"{where}: no name")
        check_quantities(obj, where)
        if obj.get("kind") == "ServingRuntime":
            C.ok(obj.get("apiVersion") == "serving.kserve.io/v1alpha1", f"{where}: apiVersion must be serving.kserve.io/v1alpha1")
            spec = obj["spec"]
            C.ok(set(spec.get("protocolVersions", [])) <= {"v1", "v2", "grpc-v1", "grpc-v2"} and spec.get("protocolVersions"), f"{where}: protocolVersions {spec.get('protocolVersions')}")
            C.ok(all(m.get("name") for m in spec.get("supportedModelFormats", [])) and spec.get("supportedModelFormats"), f"{where}: supportedModelFormats need names")
            containers = spec.get("containers", [])
            C.ok(any(c.get("name") == "kserve-container" for c in containers), f"{where}: no container named kserve-container (KServe's convention)")
            for c in containers:
                f = flags(c.get("args", []))
                C.ok(f.get("models-dir") == "/mnt/models", f"{where}: {c['name']} must read the model from /mnt/models (--models-dir)")
                C.ok(f.get("port") == "8080" and f.get("host") == "0.0.0.0", f"{where}: {c['name']} must serve HTTP on 0.0.0.0:8080")
                C.ok(8080 in [p.get("containerPort") for p in c.get("ports", [])], f"{where}: {c['name']} does not declare port 8080")
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "servingruntime"}, "spec": {"containers": containers}}
            validate_builtin(pod, f"{where} (its containers, as a Pod)")
        elif obj.get("kind") == "InferenceService":
            C.ok(obj.get("apiVersion") == "serving.kserve.io/v1beta1", f"{where}: apiVersion must be serving.kserve.io/v1beta1")
            pred = obj.get("spec", {}).get("predictor", {})
            model = pred.get("model", {})
            rt = runtimes.get(model.get("runtime"))
            if C.ok(rt is not None, f"{where}: runtime {model.get('runtime')!r} is not a ServingRuntime of {KSERVE_GLOB}"):
                fmts = {m["name"] for m in rt["spec"].get("supportedModelFormats", [])}
                C.ok(model.get("modelFormat", {}).get("name") in fmts, f"{where}: modelFormat {model.get('modelFormat')} is not one of the runtime's {fmts}")
                C.ok(model.get("protocolVersion", "v1") in rt["spec"].get("protocolVersions", []), f"{where}: protocolVersion {model.get('protocolVersion')} is not one of the runtime's")
                rc = next(c for c in rt["spec"]["containers"] if c["name"] == "kserve-container")
                args = model.get("args") or rc.get("args", [])
                grace = SHUTDOWN_GRACE_DEFAULT_S
                tgps = pred.get("terminationGracePeriodSeconds", 30)
                C.ok(prestop_sleep(rc) + grace + EXIT_MARGIN_S < tgps, f"{where}: preStop + shutdown_grace_s + {EXIT_MARGIN_S} s >= terminationGracePeriodSeconds {tgps}")
                if model.get("protocolVersion") == "grpc-v2":
                    h2c = [p for p in model.get("ports", []) if p.get("name") == "h2c"]
                    C.ok(len(h2c) == 1 and str(h2c[0].get("containerPort")) == flags(args).get("grpc-port"), f"{where}: grpc-v2 needs a port named h2c on --grpc-port")
            C.ok(re.match(r"^(pvc|s3|gs|https?|hf|oci)://", model.get("storageUri", "")) is not None, f"{where}: storageUri {model.get('storageUri')!r}")
            # The predictor's model is a container plus KServe's fields: validate the container part.
            container = {k: v for k, v in model.items() if k not in ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage")}
            container["name"] = "kserve-container"
            container.setdefault("image", "from-the-servingruntime")
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": {"containers": [container], "terminationGracePeriodSeconds": pred.get("terminationGracePeriodSeconds", 30)}}
            validate_builtin(pod, f"{where} (predictor model container, as a Pod)")
        else:
            C.ok(False, f"{where}: unexpected kind")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubectl", required=True)
    a = ap.parse_args()
    t0 = time.monotonic()

    adapter = render(a.kubectl, ADAPTER)
    for o in adapter:
        validate_builtin(o, ADAPTER)
    metric_names = adapter_rules(adapter)

    for overlay in OVERLAYS:
        objs = render(a.kubectl, overlay)
        kinds = sorted(name_of(o) for o in objs)
        print(f"{overlay}: {len(objs)} objects: {', '.join(kinds)}")
        for o in objs:
            C.ok(bool(o.get("metadata", {}).get("namespace")) or o["kind"] == "Namespace", f"{overlay}: {name_of(o)} has no namespace")
            check_quantities(o, f"{overlay}: {name_of(o)}")
            if o.get("apiVersion", "").startswith(CRD_GROUPS):
                if o["kind"] == "ServiceMonitor":
                    check_servicemonitor(o, overlay)
                else:
                    C.ok(False, f"{overlay}: {name_of(o)}: no check for this custom resource")
            else:
                validate_builtin(o, overlay)
        check_workload(objs, overlay, metric_names, gpu=overlay.endswith("gpu"))

    for path in sorted(glob.glob(KSERVE_GLOB)):
        check_kserve(path)

    print(f"check_k8s: {time.monotonic() - t0:.1f} s; schemas of Kubernetes {', '.join(KUBE_VERSIONS)}")
    print(f"check_k8s: {C.passed} passed, {len(C.failures)} failed")
    return 1 if C.failures else 0


if __name__ == "__main__":
    sys.exit(main())
