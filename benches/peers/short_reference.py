"""Writes tests/fixtures/minilm_short_reference.json: all-MiniLM-L6-v2 embeddings of one- to
three-word inputs (the hardest case for int8: mean pooling over 3-6 tokens averages little
quantization error away), computed by ONNX Runtime in fp32 on the graph `export_minilm.py`
builds, with the same mean pooling and normalization as sentence-transformers. Before writing, it
checks that this graph reproduces the sentence-transformers fixture (minilm_reference.json).

Usage (after `make bench-peers` has built target/peers-venv and the ONNX export):
  target/peers-venv/bin/python benches/peers/short_reference.py models/minilm/weights \
      target/peers/minilm-fp32.onnx tests/fixtures/minilm_short_reference.json
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from compare import accuracy, embed, pad, session, tokenizer  # noqa: E402

SHORT = [
    "Yes.", "No.", "Thanks!", "Okay", "Sure thing", "Not really", "Hmm...", "Wow!",
    "Good morning", "See you soon", "I agree", "Why not?", "Oops", "Well done", "Lol",
    "Absolutely", "Hello there", "Bye", "Maybe later", "Nope", "Merci beaucoup", "Danke",
    "OK!", "Great job!",
]


def main():
    weights, onnx_path, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    sess = session(onnx_path, 2)
    tok = tokenizer(weights)
    worst, mean = accuracy(sess, tok, Path("tests/fixtures/minilm_reference.json"))
    if worst < 0.99999:
        sys.exit(f"the fp32 graph does not reproduce sentence-transformers (min cosine {worst})")
    items = []
    for text in SHORT:
        ids = tok.encode(text).ids
        vec = embed(sess, *pad([ids]))[0]
        items.append({"text": text, "token_ids": ids, "embedding": [float(v) for v in vec]})
    doc = {
        "model": "all-MiniLM-L6-v2",
        "produced_with": f"ONNX Runtime {ort.__version__} fp32, benches/peers/export_minilm.py graph, "
        "mean pooling + L2 normalization (benches/peers/short_reference.py)",
        "note": "agrees with sentence-transformers on minilm_reference.json: "
        f"min cosine {worst:.7f}, mean {mean:.7f}",
        "items": items,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}: {len(items)} inputs of {min(len(i['token_ids']) for i in items)}-"
          f"{max(len(i['token_ids']) for i in items)} tokens; fixture agreement min {worst:.7f}")


if __name__ == "__main__":
    main()
