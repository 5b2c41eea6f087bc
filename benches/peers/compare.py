"""wattserve's embedding engine and ONNX Runtime side by side on the same MiniLM weights and the
same sentences, alternated round by round: sentences per wall-second and per CPU-second at
batch 32 and batch 1, the median time of one batch, and accuracy against sentence-transformers.

Usage (make bench-peers): compare.py --wattserve BIN --weights DIR --onnx DIR [--rounds 3]
  [--seconds 6] [--threads 2] [--out FILE.md]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

PRECISIONS = ["f32", "bf16", "int8"]
BATCHES = [32, 1]


def cpu_line():
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
    return f"{model}, {os.cpu_count()} CPUs; " + " ".join(f for f in wanted if f in flags)


def model_dir(weights: Path) -> Path:
    root = Path(tempfile.mkdtemp(prefix="wattserve-peers-"))
    for p in PRECISIONS:
        d = root / f"minilm-{p}"
        d.mkdir()
        (d / "model.toml").write_text(
            f'name = "minilm-{p}"\ntask = "embedding"\nformat = "safetensors"\n'
            f'path = "{weights.resolve()}"\nprecision = "{p}"\ndevice = "cpu"\n'
            "[batching]\nmax_batch_size = 32\n"
        )
    return root


def run_wattserve(args, models: Path, inputs: Path, first: bool):
    out = Path(tempfile.mkdtemp(prefix="wattserve-peers-")) / "bench.json"
    cmd = [
        args.wattserve, "bench", "--models-dir", str(models),
        "--compare", ",".join(f"minilm-{p}" for p in PRECISIONS),
        "--offline-ceiling", "--ceiling-batch", ",".join(map(str, BATCHES)),
        "--concurrency", "1", "--requests", "1", "--duration", str(args.seconds),
        "--threads", str(args.threads), "--json", str(out),
    ]
    cmd += ["--save-inputs", str(inputs)] if first else ["--inputs", str(inputs)]
    env = dict(os.environ, WATTSERVE_LOG="warn")
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"compare.py: {' '.join(cmd)} failed:\n{done.stderr}")
    report = json.loads(out.read_text())
    return {
        (c["model"].removeprefix("minilm-"), c["batch_size"]): c for c in report["ceilings"]
    }


def tokenizer(weights: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(weights / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    return tok


def pad(ids_list):
    t = max(len(i) for i in ids_list)
    ids = np.zeros((len(ids_list), t), np.int64)
    mask = np.zeros((len(ids_list), t), np.int64)
    for r, i in enumerate(ids_list):
        ids[r, : len(i)] = i
        mask[r, : len(i)] = 1
    return ids, mask


def embed(session, ids, mask):
    hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def session(path: Path, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning off, as wattserve's pools do not spin: on a shared machine spinning threads take
    # CPU from everything else (and per CPU-second figures would count the spin).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_ort(sess, batches, seconds):
    embed(sess, *batches[0])
    lat, done, n = [], 0, 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        ids, mask = batches[n % len(batches)]
        s = time.perf_counter()
        embed(sess, ids, mask)
        lat.append((time.perf_counter() - s) * 1e3)
        done += len(ids)
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"inputs_per_s": done / wall, "inputs_per_cpu_s": done / cpu, "batch_p50_ms": statistics.median(lat)}


def accuracy(sess, tok, fixture: Path):
    ref = json.loads(fixture.read_text())
    items = ref["items"]
    cos = []
    for item in items:
        if not item.get("text"):
            continue
        ids = tok.encode(item["text"]).ids
        e = embed(sess, *pad([ids]))[0]
        want = np.asarray(item["embedding"], np.float32)
        cos.append(float(e @ want / np.linalg.norm(want)))
    return min(cos), float(np.mean(cos))


def load_avg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wattserve", required=True)
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--onnx", required=True, type=Path)
    ap.add_argument("--fixture", type=Path, default=Path("tests/fixtures/minilm_reference.json"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    models = model_dir(args.weights)
    inputs = models / "inputs.jsonl"
    tok = tokenizer(args.weights)
    sessions = {p: session(args.onnx / f"minilm-{p}.onnx", args.threads) for p in ["fp32", "int8"]}
    loads = [load_avg()]
    ws_runs, ort_runs = [], []
    for r in range(args.rounds):
        ws_runs.append(run_wattserve(args, models, inputs, first=(r == 0)))
        texts = [json.loads(line) for line in inputs.read_text().splitlines() if line.strip()]
        ids = [tok.encode(t).ids for t in texts]
        one = {}
        for p, sess in sessions.items():
            for b in BATCHES:
                batches = [pad(ids[i : i + b]) for i in range(0, len(ids), b)]
                one[(p, b)] = run_ort(sess, batches, args.seconds)
            # ONNX Runtime's best case at batch 32: batches of similar lengths (little padding),
            # as a server that groups requests by length could form them.
            by_len = sorted(ids, key=len)
            batches = [pad(by_len[i : i + 32]) for i in range(0, len(by_len), 32)]
            one[(p, "32 sorted")] = run_ort(sess, batches, args.seconds)
        ort_runs.append(one)
        loads.append(load_avg())
        print(f"round {r + 1}/{args.rounds} done, load {loads[-1]}", file=sys.stderr)

    def med(runs, key, field):
        return statistics.median(run[key][field] for run in runs)

    lens = [len(i) for i in ids]
    lines = [
        f"CPU: {cpu_line()}. Threads: {args.threads}. ONNX Runtime {ort.__version__} (spinning off). "
        f"{len(texts)} sentences of {min(lens)}-{max(lens)} tokens (median {int(statistics.median(lens))}), "
        f"in order, each batch padded to its longest for ONNX Runtime (and, as its best case, sorted by length "
        f"first), packed without padding by wattserve. "
        f"Medians of {args.rounds} alternated rounds of {args.seconds:g} s; load average (1/5/15 min) "
        f"{' -> '.join(loads)}.",
        "",
        "| engine | batch | sentences/s | per CPU-second | batch p50 (ms) | vs ONNX Runtime fp32 / int8 (per CPU-s) | vs its length-sorted batches |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in BATCHES:
        keys = [(p, b) for p in ["fp32", "int8"]]
        if b == 32:
            keys += [(p, "32 sorted") for p in ["fp32", "int8"]]
        for p, kb in keys:
            label = f"ONNX Runtime {p}" + (", length-sorted batches" if kb != b else "")
            lines.append(
                f"| {label} | {b} | {med(ort_runs, (p, kb), 'inputs_per_s'):.1f} | "
                f"{med(ort_runs, (p, kb), 'inputs_per_cpu_s'):.1f} | {med(ort_runs, (p, kb), 'batch_p50_ms'):.2f} | | |"
            )
        for p in PRECISIONS:
            cpu = med(ws_runs, (p, b), "inputs_per_cpu_s")
            ratio = " / ".join(f"{cpu / med(ort_runs, (o, b), 'inputs_per_cpu_s'):.2f}x" for o in ["fp32", "int8"])
            sorted_ratio = (
                " / ".join(f"{cpu / med(ort_runs, (o, '32 sorted'), 'inputs_per_cpu_s'):.2f}x" for o in ["fp32", "int8"])
                if b == 32
                else ""
            )
            lines.append(
                f"| wattserve {p} | {b} | {med(ws_runs, (p, b), 'inputs_per_s'):.1f} | {cpu:.1f} | "
                f"{med(ws_runs, (p, b), 'batch_p50_ms'):.2f} | {ratio} | {sorted_ratio} |"
            )
    lines += ["", "| ONNX Runtime vs sentence-transformers (fixture sentences) | min cosine | mean cosine |", "|---|---|---|"]
    for p, sess in sessions.items():
        lo, mean = accuracy(sess, tok, args.fixture)
        lines.append(f"| {p} | {lo:.4f} | {mean:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
