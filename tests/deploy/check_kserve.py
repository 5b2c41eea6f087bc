#!/usr/bin/env python3
"""Checks the KServe manifests against KServe's own resource models (`make check-k8s`).

No schema of the ServingRuntime and InferenceService CRDs is available offline, but KServe's
Python SDK (the `kserve` package of target/v2-venv, pinned in tests/v2/requirements.txt) carries
generated models of every KServe resource, down to the Kubernetes types they embed (from the
`kubernetes` package): each model lists its fields (attribute_map), their types (openapi_types)
and refuses a missing required field. This walks every manifest through them: an unknown field,
a value of the wrong type or a missing required field fails. It checks names and types, not the
enums and patterns of the CRDs (tests/deploy/check_k8s.py checks the values that matter).

Usage: check_kserve.py FILE...   (run with target/v2-venv's python)
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import version

import kserve
import kubernetes.client
import yaml
from kserve import models as kserve_models
from kubernetes.client import models as k8s_models

ROOTS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
failures: list[str] = []
passed = 0


def model_class(name: str):
    for module, config in ((kserve_models, kserve.Configuration), (k8s_models, kubernetes.client.Configuration)):
        cls = getattr(module, name, None)
        if cls is not None:
            return cls, config
    return None, None


def required_fields(cls, config) -> list[str]:
    """The required fields: pydantic's (the kubernetes package's models), or the attributes whose
    setter refuses None (the kserve package's, by the older generator)."""
    if hasattr(cls, "model_fields"):
        return [cls.attribute_map[n] for n, f in cls.model_fields.items() if f.is_required() and n in cls.attribute_map]
    obj = cls.__new__(cls)
    c = config()
    c.client_side_validation = True
    obj.local_vars_configuration = c
    out = []
    for attr in cls.openapi_types:
        try:
            setattr(obj, attr, None)
        except ValueError:
            out.append(cls.attribute_map[attr])
    return out


def check(value, type_name: str, path: str) -> None:
    global passed
    if value is None:
        return
    # Types read `list[X]` and `dict(str, X)` in the kserve models, `List[X]` and `Dict[str, X]`
    # in the kubernetes ones.
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        if not isinstance(value, list):
            failures.append(f"{path}: expected a list ({type_name}), got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            check(v, m.group(1), f"{path}[{i}]")
        return
    if m := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        if not isinstance(value, dict):
            failures.append(f"{path}: expected a map ({type_name}), got {type(value).__name__}")
            return
        for k, v in value.items():
            check(v, m.group(1) or m.group(2), f"{path}.{k}")
        return
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name in ("int", "float") and isinstance(value, bool))
        if ok:
            passed += 1
        else:
            failures.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    if type_name in ("datetime", "date"):
        return
    cls, config = model_class(type_name)
    if cls is None:
        failures.append(f"{path}: no model {type_name} in kserve or kubernetes")
        return
    if not isinstance(value, dict):
        failures.append(f"{path}: expected an object ({type_name}), got {type(value).__name__}")
        return
    by_json = {j: a for a, j in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in by_json:
            failures.append(f"{path}.{key}: unknown field of {type_name} (known: {', '.join(sorted(by_json))})")
            continue
        check(v, cls.openapi_types[by_json[key]], f"{path}.{key}")
    for req in required_fields(cls, config):
        if req not in value:
            failures.append(f"{path}: {type_name} requires {req}")
    passed += 1


def main() -> int:
    files = sys.argv[1:]
    if not files:
        print(__doc__, file=sys.stderr)
        return 2
    n = 0
    for f in files:
        with open(f) as fh:
            for obj in yaml.safe_load_all(fh):
                if not obj:
                    continue
                root = ROOTS.get((obj.get("apiVersion"), obj.get("kind")))
                where = f"{f}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
                if root is None:
                    failures.append(f"{where}: not a ServingRuntime (v1alpha1) or InferenceService (v1beta1)")
                    continue
                check(obj, root, where)
                n += 1
    for msg in failures:
        print(f"FAIL {msg}")
    print(f"check_kserve: {n} objects against the resource models of kserve {version('kserve')} and kubernetes {version('kubernetes')}")
    print(f"check_kserve: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
