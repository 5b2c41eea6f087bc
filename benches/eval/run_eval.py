"""lm-evaluation-harness against wattserve, one precision at a time: starts the release binary
serving SmolLM2 at each precision, runs the repository's multiple-choice task through
lm-evaluation-harness's `local-completions` backend (log-likelihoods from `echo` + `logprobs`,
tokens from the server's own `/tokenize`), and prints the accuracy per precision.

Usage: run_eval.py --binary target/release/wattserve --lm-eval target/eval-venv/bin/lm_eval
                   [--precisions int8,gguf,f32] [--out target/eval] [--limit N]
Exits non-zero when the harness fails or reports no accuracy.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base, server, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"run_eval: the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"run_eval: the server at {base} was not ready within {seconds} s")


def run_one(args, precision, out):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(out / f"server-{precision}.log", "w")
    server = subprocess.Popen(
        [args.binary, "serve", "--models-dir", str(ROOT / "models"), "--model", "smollm2",
         "--precision", precision, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=out,
    )
    try:
        wait_ready(base, server)
        results = out / f"results-{precision}"
        cmd = [
            args.lm_eval, "--model", "local-completions",
            "--model_args",
            f"model=smollm2,base_url={base}/v1/completions,tokenizer_backend=remote,"
            "tokenized_requests=True,num_concurrent=4,max_retries=1",
            "--tasks", "wattserve_mc", "--include_path", str(ROOT / "benches/eval"),
            "--output_path", str(results),
        ]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OPENAI_API_KEY="unused")
        started = time.time()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.time() - started
        (out / f"lm-eval-{precision}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            sys.exit(f"run_eval: lm_eval failed for {precision} (exit {done.returncode}):\n"
                     + (done.stdout + done.stderr)[-3000:])
        found = sorted(results.rglob("results_*.json"))
        if not found:
            sys.exit(f"run_eval: lm_eval wrote no results under {results}")
        task = json.loads(found[-1].read_text())["results"]["wattserve_mc"]
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        joules = sum(
            float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith("wattserve_energy_joules_total{") and 'model="smollm2"' in line
        )
        return {
            "precision": precision,
            "acc": task["acc,none"],
            "acc_stderr": task.get("acc_stderr,none"),
            "acc_norm": task["acc_norm,none"],
            "seconds": seconds,
            "joules": joules,
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("--lm-eval", required=True)
    p.add_argument("--precisions", default="int8,gguf,f32")
    p.add_argument("--out", default=str(ROOT / "target/eval"))
    p.add_argument("--limit", type=int)
    args = p.parse_args()
    args.binary = str(Path(args.binary).resolve())
    args.lm_eval = str(Path(args.lm_eval).resolve())
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_one(args, precision, out) for precision in args.precisions.split(",")]
    lines = ["| SmolLM2-135M-Instruct | acc | ± | acc_norm | lm-eval seconds | joules (server) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        se = "-" if r["acc_stderr"] in (None, "N/A") else f"{r['acc_stderr']:.3f}"
        lines.append(f"| {r['precision']} | {r['acc']:.3f} | {se} | {r['acc_norm']:.3f} | "
                     f"{r['seconds']:.1f} | {r['joules']:.1f} |")
    table = "\n".join(lines)
    (out / "eval.md").write_text(table + "\n")
    (out / "eval.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
