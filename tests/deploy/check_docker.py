#!/usr/bin/env python3
"""Offline checks of the container images and the local stack (`make check-docker`). No Docker
engine or registry is needed.

1. hadolint on Dockerfile and Dockerfile.cuda (any finding fails).
2. The Dockerfiles against the repository: every COPY source exists, the builder's stub benches
   are Cargo.toml's [[bench]] targets (a missing one breaks the dependency layer's build), the
   Rust image is at least Cargo.toml's rust-version, the runtime stage runs as a numeric non-root
   user, listens on 0.0.0.0:8080/8081 and checks /health; .dockerignore keeps target/, .git and
   the weights out of the build context.
3. deploy/compose.yaml: `docker compose config` (or docker-compose 1.x) where one is installed,
   and always: bind-mount sources exist, published ports are on 127.0.0.1, the stop grace covers
   server.shutdown_grace_s, the Prometheus scrape config reaches the compose services, and
   Grafana's provisioning matches the mounts.
4. promtool check config deploy/compose/prometheus.yml (with the rule file it loads).

Usage: check_docker.py --hadolint PATH [--promtool PATH]   (from the repository root)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import yaml

DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
COMPOSE = Path("deploy/compose.yaml")
SHUTDOWN_GRACE_S = 30.0  # server.shutdown_grace_s default (docs/configuration.md)

failures: list[str] = []
passed = 0


def ok(cond: bool, what: str) -> bool:
    global passed
    if cond:
        passed += 1
    else:
        failures.append(what)
        print(f"FAIL {what}")
    return cond


def instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in Path(path).read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages(ins: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for i in ins:
        if i[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(i)
    return out


def duration_s(text: str) -> float:
    total = 0.0
    for n, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", text):
        total += float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def check_dockerfile(path: str, cargo: dict) -> None:
    ins = instructions(path)
    text = Path(path).read_text()
    st = stages(ins)
    ok(len(st) == 3, f"{path}: expected three stages (builder, weights, runtime), found {len(st)}")
    # COPY sources from the build context exist.
    for word, args in ins:
        if word == "COPY" and "--from=" not in args:
            srcs = [a for a in args.split() if not a.startswith("--")][:-1]
            for s in srcs:
                ok(Path(s).exists(), f"{path}: COPY source {s} does not exist")
    # Stub benches = Cargo.toml's [[bench]] targets.
    benches = sorted(b["name"] for b in cargo.get("bench", []))
    m = re.search(r"for b in ([a-z0-9_ ]+); do", text)
    ok(m is not None and sorted(m.group(1).split()) == benches, f"{path}: the stub benches ({m.group(1) if m else 'none'}) are not Cargo.toml's [[bench]] targets {benches}")
    # Rust toolchain >= rust-version.
    want = tuple(int(x) for x in cargo["workspace"]["package"]["rust-version"].split("."))
    m = re.search(r"ARG RUST_VERSION=([0-9.]+)", text)
    got = tuple(int(x) for x in m.group(1).split(".")) if m else ()
    ok(got[:2] >= want[:2], f"{path}: RUST_VERSION {got} is older than Cargo.toml's rust-version {want}")
    ok("--locked" in text, f"{path}: cargo build without --locked")
    # Runtime stage.
    runtime = st[-1] if st else []
    user = [a for w, a in runtime if w == "USER"]
    ok(bool(user) and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user[-1]) is not None, f"{path}: the runtime stage must end as a numeric non-root USER, has {user}")
    env = " ".join(a for w, a in runtime if w == "ENV")
    for k, v in (("WATTSERVE_HOST", "0.0.0.0"), ("WATTSERVE_PORT", "8080"), ("WATTSERVE_GRPC_PORT", "8081"), ("WATTSERVE_MODELS_DIR", "/models")):
        ok(f"{k}={v}" in env, f"{path}: the runtime stage does not set {k}={v}")
    expose = " ".join(a for w, a in runtime if w == "EXPOSE").split()
    ok(sorted(expose) == ["8080", "8081"], f"{path}: EXPOSE {expose}, expected 8080 8081")
    hc = " ".join(a for w, a in runtime if w == "HEALTHCHECK")
    ok("/health" in hc and "WATTSERVE_PORT" in hc, f"{path}: the HEALTHCHECK must GET /health on $WATTSERVE_PORT")
    ok(any(w == "ENTRYPOINT" and "wattserve" in a for w, a in runtime), f"{path}: no ENTRYPOINT running wattserve")
    ok("COPY --from=weights /models /models" in text and "WITH_WEIGHTS=1" in text, f"{path}: the runtime stage does not take /models from the weights stage (WITH_WEIGHTS=1 default)")


def check_dockerignore() -> None:
    lines = [l.strip() for l in Path(".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    ok(lines[:1] == ["*"], ".dockerignore must start by excluding everything (`*`), then allow what the Dockerfiles copy")
    ok("models/*/weights/" in lines, ".dockerignore must exclude models/*/weights/")
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    for d in ("target", ".git", "tests", "deploy", "docs"):
        ok(d not in allowed, f".dockerignore lets {d}/ into the build context")
    for df in DOCKERFILES:
        for word, args in instructions(df):
            if word == "COPY" and "--from=" not in args:
                for s in [a for a in args.split() if not a.startswith("--")][:-1]:
                    top = s.strip("./").split("/")[0]
                    ok(top in allowed, f".dockerignore keeps {s} (COPY in {df}) out of the build context")


def check_compose() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    base = COMPOSE.parent
    services = compose.get("services", {})
    for name in ("wattserve", "prometheus", "grafana", "alertmanager"):
        ok(name in services, f"{COMPOSE}: no service {name}")
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith((".", "/")):
                ok((base / src).exists(), f"{COMPOSE}: {name} mounts {src}, which does not exist")
        for p in svc.get("ports", []):
            ok(str(p).startswith("127.0.0.1:"), f"{COMPOSE}: {name} publishes {p} beyond 127.0.0.1")
        ok("image" in svc, f"{COMPOSE}: {name} has no pinned image")
        ok(":" in svc.get("image", "") and not svc.get("image", "").endswith(":latest"), f"{COMPOSE}: {name} image {svc.get('image')} is not pinned to a version")
    ws = services.get("wattserve", {})
    build = ws.get("build", {})
    ok((base / build.get("context", "") / build.get("dockerfile", "Dockerfile")).exists(), f"{COMPOSE}: wattserve's build context/dockerfile does not exist")
    ok(duration_s(str(ws.get("stop_grace_period", "10s"))) > SHUTDOWN_GRACE_S + 1, f"{COMPOSE}: wattserve's stop_grace_period {ws.get('stop_grace_period')} does not cover shutdown_grace_s ({SHUTDOWN_GRACE_S} s) + 1 s")

    # Prometheus: its config is mounted, and scrapes the compose services on their ports.
    prom = services.get("prometheus", {})
    cfg_flag = next((c for c in prom.get("command", []) if c.startswith("--config.file=")), "")
    cfg_in_container = cfg_flag.split("=", 1)[1] if cfg_flag else ""
    host_cfg = None
    for v in prom.get("volumes", []):
        parts = v.split(":")
        if len(parts) >= 2 and cfg_in_container.startswith(parts[1].rstrip("/") + "/"):
            host_cfg = base / parts[0] / cfg_in_container[len(parts[1].rstrip("/")) + 1:]
    if ok(host_cfg is not None and host_cfg.exists(), f"{COMPOSE}: prometheus' --config.file {cfg_in_container} is not a mounted file"):
        pcfg = yaml.safe_load(host_cfg.read_text())
        targets = {t for j in pcfg.get("scrape_configs", []) for s in j.get("static_configs", []) for t in s.get("targets", [])}
        ok("wattserve:8080" in targets, f"{host_cfg}: no scrape target wattserve:8080")
        ok(any("wattserve" in j.get("job_name", "") for j in pcfg.get("scrape_configs", [])), f"{host_cfg}: no job named *wattserve* (WattserveTargetDown selects job=~\".*wattserve.*\")")
        am = {t for a in pcfg.get("alerting", {}).get("alertmanagers", []) for s in a.get("static_configs", []) for t in s.get("targets", [])}
        ok(am == {"alertmanager:9093"}, f"{host_cfg}: alertmanagers {am}, expected alertmanager:9093")
        for rf in pcfg.get("rule_files", []):
            ok((host_cfg.parent / rf).exists(), f"{host_cfg}: rule file {rf} does not exist")

    # Grafana: datasource URL, dashboard provider path = where the dashboard is mounted.
    graf = services.get("grafana", {})
    prov = Path("deploy/grafana/provisioning")
    ds = yaml.safe_load((prov / "datasources/prometheus.yml").read_text())
    urls = [d.get("url") for d in ds.get("datasources", [])]
    ok(urls == ["http://prometheus:9090"], f"{prov}/datasources: url {urls}, expected http://prometheus:9090")
    dash = yaml.safe_load((prov / "dashboards/wattserve.yml").read_text())
    paths = [p.get("options", {}).get("path") for p in dash.get("providers", [])]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf.get("volumes", []) if v.startswith(".")}
    ok(any(m.rsplit("/", 1)[0] in paths and src.endswith(".json") for m, src in mounts.items()), f"{prov}/dashboards: provider path {paths} holds no mounted dashboard ({mounts})")
    ok(mounts.get("/etc/grafana/provisioning") == "./grafana/provisioning", f"{COMPOSE}: grafana does not mount ./grafana/provisioning at /etc/grafana/provisioning")
    home = graf.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    ok(home is None or home in mounts, f"{COMPOSE}: GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is not a mounted file")


def compose_cli() -> str:
    """`docker compose config -q` or `docker-compose config -q`, where installed."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        if subprocess.run(cmd + ["version"], capture_output=True, check=False).returncode != 0:
            continue
        proc = subprocess.run(cmd + ["-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, check=False)
        ok(proc.returncode == 0, f"{' '.join(cmd)} config: {proc.stderr.strip()}")
        return " ".join(cmd)
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hadolint", required=True)
    ap.add_argument("--promtool")
    a = ap.parse_args()
    t0 = time.monotonic()
    proc = subprocess.run([a.hadolint, "--no-color", *DOCKERFILES], capture_output=True, text=True, check=False)
    ok(proc.returncode == 0 and not proc.stdout.strip(), f"hadolint: {proc.stdout.strip()} {proc.stderr.strip()}")
    cargo = tomllib.loads(Path("Cargo.toml").read_text())
    for df in DOCKERFILES:
        check_dockerfile(df, cargo)
    check_dockerignore()
    check_compose()
    cli = compose_cli()
    if a.promtool:
        proc = subprocess.run([a.promtool, "check", "config", "deploy/compose/prometheus.yml"], capture_output=True, text=True, check=False)
        ok(proc.returncode == 0, f"promtool check config deploy/compose/prometheus.yml: {proc.stdout.strip()} {proc.stderr.strip()}")
    print(f"check_docker: {time.monotonic() - t0:.1f} s; compose file validated by "
          f"{cli or 'the checks here only (no docker compose / docker-compose installed)'}"
          f"{'' if a.promtool else '; promtool not run'}")
    print(f"check_docker: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
