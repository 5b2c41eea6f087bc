"""Builds all-MiniLM-L6-v2 as ONNX from the same safetensors wattserve serves, without PyTorch:
the BERT graph written out op by op (opset 17), then ONNX Runtime's own transformer optimizer
(attention, SkipLayerNorm and BiasGelu fusions: its fastest CPU form), then its dynamic int8
quantization with per-channel QInt8 weights.

Usage: export_minilm.py WEIGHTS_DIR OUT_DIR   (writes OUT_DIR/minilm-fp32.onnx, minilm-int8.onnx)
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file


def build(weights_dir: Path) -> onnx.ModelProto:
    cfg = json.loads((weights_dir / "config.json").read_text())
    w = load_file(str(weights_dir / "model.safetensors"))
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = h // heads
    eps = cfg.get("layer_norm_eps", 1e-12)
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def param(key, transpose=False):
        v = w[prefix + key].astype(np.float32)
        return const(key + (".T" if transpose else ""), v.T.copy() if transpose else v)

    counter = [0]

    def node(op, inputs, **attrs):
        counter[0] += 1
        out = f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x, key):
        return node("Add", [node("MatMul", [x, param(key + ".weight", True)]), param(key + ".bias")])

    def layer_norm(x, key):
        return node(
            "LayerNormalization",
            [x, param(key + ".weight"), param(key + ".bias")],
            axis=-1,
            epsilon=eps,
        )

    e = "embeddings."
    words = node("Gather", [param(e + "word_embeddings.weight"), "input_ids"])
    seq_len = node("Gather", [node("Shape", ["input_ids"]), const("one_i", np.array(1, np.int64))])
    pos_ids = node("Range", [const("zero_i", np.array(0, np.int64)), seq_len, "one_i"])
    positions = node("Gather", [param(e + "position_embeddings.weight"), pos_ids])
    type0 = const("type0", w[prefix + e + "token_type_embeddings.weight"][0].astype(np.float32))
    x = node("Add", [node("Add", [words, positions]), type0])
    x = layer_norm(x, e + "LayerNorm")
    # Additive mask (B, 1, 1, T): 0 where attended, -10000 where padded (as Hugging Face does).
    # (the pattern ONNX Runtime's attention fusion recognises).
    u1 = node("Unsqueeze", ["attention_mask", const("axis1", np.array([1], np.int64))])
    u2 = node("Unsqueeze", [u1, const("axis2", np.array([2], np.int64))])
    inverted = node("Sub", [const("one_f", np.array(1.0, np.float32)), node("Cast", [u2], to=TensorProto.FLOAT)])
    mask = node("Mul", [inverted, const("neg", np.array(-10000.0, np.float32))])
    split_shape = const("split_shape", np.array([0, 0, heads, hd], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, h], np.int64))
    sqrt_hd = const("sqrt_hd", np.array(np.sqrt(hd), np.float32))
    for i in range(cfg["num_hidden_layers"]):
        l = f"encoder.layer.{i}."
        a = l + "attention."

        def heads_of(t, perm):
            return node("Transpose", [node("Reshape", [t, split_shape])], perm=perm)

        q = heads_of(linear(x, a + "self.query"), [0, 2, 1, 3])
        k = heads_of(linear(x, a + "self.key"), [0, 2, 3, 1])
        v = heads_of(linear(x, a + "self.value"), [0, 2, 1, 3])
        scores = node("Add", [node("Div", [node("MatMul", [q, k]), sqrt_hd]), mask])
        probs = node("Softmax", [scores], axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape])
        x = layer_norm(node("Add", [linear(ctx, a + "output.dense"), x]), a + "output.LayerNorm")
        up = linear(x, l + "intermediate.dense")
        erf = node("Erf", [node("Div", [up, const(f"sqrt2_{i}", np.array(np.sqrt(2.0), np.float32))])])
        gelu = node(
            "Mul",
            [node("Mul", [up, node("Add", [erf, "one_f"])]), const(f"half_{i}", np.array(0.5, np.float32))],
        )
        x = layer_norm(node("Add", [linear(gelu, l + "output.dense"), x]), l + "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    graph = helper.make_graph(
        nodes,
        "minilm",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", h])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, cfg


def main():
    weights_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    model, cfg = build(weights_dir)
    raw = out / "minilm-raw.onnx"
    onnx.save(model, str(raw))
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(
        str(raw),
        model_type="bert",
        num_heads=cfg["num_attention_heads"],
        hidden_size=cfg["hidden_size"],
        opt_level=0,
    )
    print("export: ONNX Runtime fusions:", opt.get_fused_operator_statistics(), file=sys.stderr)
    fp32 = out / "minilm-fp32.onnx"
    opt.save_model_to_file(str(fp32))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(out / "minilm-int8.onnx"),
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    print(f"export: wrote {fp32} and {out / 'minilm-int8.onnx'}", file=sys.stderr)


if __name__ == "__main__":
    main()
