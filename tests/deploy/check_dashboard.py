#!/usr/bin/env python3
"""Checks a Grafana dashboard's PromQL against promtool and a real /metrics page.

    check_dashboard.py --dashboard deploy/grafana/wattserve.json --metrics FILE_OR_URL \\
        [--promtool PATH] [--source src/metrics.rs]
    check_dashboard.py --self-test

Every `expr` of every panel target (rows and nested panels included) and every Prometheus
template-variable query is collected, with Grafana's variables replaced by valid values
(`$model` by a value of the label from /metrics, `$__rate_interval`, `$__interval` and `$__range`
by `5m`). Then:

  (a) all of them are written as recording rules into a temporary rules file and parsed by
      `promtool check rules` (an expression promtool refuses is named with its panel);
  (b) every metric name they use must appear in the /metrics text: as a sample, as a
      `# TYPE` line, or, for `NAME_bucket`, `NAME_sum` and `NAME_count`, as `# TYPE NAME
      histogram` (a classic histogram's bare NAME is refused: it has no series);
  (c) every label in a selector's matchers must be on that metric's samples, and every label of
      `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` on one of the expression's
      metrics (labels made by label_replace/label_join/count_values count too);
      `label_values(METRIC, LABEL)` needs LABEL on METRIC.

Metrics that exist only after an event (see EVENT_ONLY below) may be absent from /metrics, but
each must then still be declared in the server's source (`--source`, default src/metrics.rs), so
that a renamed metric cannot hide behind the list. Labels not exported yet may be listed in
FUTURE_LABELS (empty today: the dashboard queries no label the server does not export).

Exit status: 0 all good; 1 problems found (each listed); 2 usage error or promtool unavailable.
Standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Metrics that the server declares but exports only once the event they count has happened: a
# healthy server's /metrics lacks them. name -> why. Each must appear in --source.
EVENT_ONLY = {
    "wattserve_energy_settle_fallbacks_total":
        "counted only when a request's energy had to be estimated (meter did not settle in time)",
    "wattserve_energy_read_failures_total":
        "counted only when a reading of the energy source fails",
}

# Labels a panel may use before the server exports them: (metric, label) -> why. Empty: add an
# entry only together with a panel that explains the gap.
FUTURE_LABELS = {}

# Grafana's built-in variables and the value each is replaced by.
BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "5m",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__interval_ms": "300000",
    "__interval_s": "300",
}

# ----------------------------------------------------------------------------- PromQL lexing

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
# Words that are never metric names where they stand (binary operators, modifiers, literals).
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Functions whose string argument names a label they create: name -> index of that argument
# among the call's string arguments.
LABEL_MAKERS = {"label_replace": 0, "label_join": 0, "count_values": 0}

TOKEN_RE = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<number>(?:0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?
                 |\.[0-9]+(?:[eE][+-]?[0-9]+)?)(?:[a-zA-Z_][a-zA-Z0-9_]*)*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],:@])
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    pass


def tokenize(expr):
    """Tokens of `expr` as (kind, text), whitespace and comments dropped.

    Durations (`5m`, `1h30m`) and numbers (`1e3`, `0x1f`, `.5`) are single `number` tokens;
    strings keep their quotes.
    """
    out = []
    pos = 0
    while pos < len(expr):
        m = TOKEN_RE.match(expr, pos)
        if not m:
            raise PromQLError(f"cannot tokenize at {expr[pos:pos + 20]!r}")
        kind = m.lastgroup
        if kind not in ("ws", "comment"):
            out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def unquote(s):
    body = s[1:-1]
    if s[0] == "`":
        return body
    return re.sub(r"\\(.)", r"\1", body)


def analyse(expr):
    """What `expr` uses: {"metrics": {name}, "selectors": [(name or None, {labels})],
    "grouping": {labels}, "made": {labels created by label_replace & co}}."""
    toks = tokenize(expr)
    metrics = set()
    selectors = []
    grouping = set()
    made = set()
    i = 0
    n = len(toks)
    # Open calls of label-making functions: [depth of their "(", name, strings seen].
    makers = []
    depth = 0

    def next_tok(j):
        return toks[j] if j < n else (None, None)

    def read_matchers(j):
        """toks[j] is "{": returns (labels, __name__ value or None, index after "}")."""
        labels = set()
        name = None
        j += 1
        while True:
            kind, text = next_tok(j)
            if kind is None:
                raise PromQLError("unclosed '{'")
            if text == "}":
                return labels, name, j + 1
            if text == ",":
                j += 1
                continue
            if kind not in ("ident",):
                # Keywords are legal label names; anything else is not a matcher.
                raise PromQLError(f"bad label matcher at {text!r}")
            label = text
            op_kind, op = next_tok(j + 1)
            v_kind, value = next_tok(j + 2)
            if op not in ("=", "!=", "=~", "!~") or v_kind != "string":
                raise PromQLError(f"bad label matcher for {label!r}")
            if label == "__name__":
                if op == "=":
                    name = unquote(value)
            else:
                labels.add(label)
            j += 3

    def read_label_list(j):
        """toks[j] is "(" of a grouping clause: returns (labels, index after ")")."""
        labels = set()
        j += 1
        while True:
            kind, text = next_tok(j)
            if kind is None:
                raise PromQLError("unclosed grouping '('")
            if text == ")":
                return labels, j + 1
            if text != ",":
                if kind != "ident":
                    raise PromQLError(f"bad label in grouping: {text!r}")
                labels.add(text)
            j += 1

    while i < n:
        kind, text = toks[i]
        if kind == "string":
            for mk in makers:
                if mk[0] == depth:
                    if mk[2] == LABEL_MAKERS[mk[1]]:
                        made.add(unquote(text))
                    mk[2] += 1
            i += 1
        elif kind == "ident":
            nk, nt = next_tok(i + 1)
            word = text.lower()  # PromQL's keywords and aggregations ignore case
            nt_word = nt.lower() if nk == "ident" else nt
            if word in GROUPING:
                if nt == "(":
                    labels, i = read_label_list(i + 1)
                    grouping |= labels
                else:
                    i += 1  # `on` etc. without a list cannot occur; `by` alone is an error
            elif word in KEYWORDS:
                i += 1
            elif nt == "(" or (word in AGGREGATIONS and nt_word in ("by", "without")):
                # A function or aggregation call (its arguments are scanned as we go).
                if text in LABEL_MAKERS:
                    makers.append([depth + 1, text, 0])
                i += 1
            else:
                metrics.add(text)
                if nt == "{":
                    labels, name, i = read_matchers(i + 1)
                    if name is not None:
                        raise PromQLError(f"{text} has a __name__ matcher too")
                    selectors.append((text, labels))
                else:
                    selectors.append((text, set()))
                    i += 1
        elif text == "{":
            labels, name, i = read_matchers(i)
            if name is not None:
                metrics.add(name)
            selectors.append((name, labels))
        elif text == "[":
            # Range or subquery: durations (and a ':' step) only.
            j = i + 1
            while next_tok(j)[1] not in ("]", None):
                j += 1
            if next_tok(j)[1] is None:
                raise PromQLError("unclosed '['")
            i = j + 1
        elif text == "(":
            depth += 1
            i += 1
        elif text == ")":
            makers = [mk for mk in makers if mk[0] != depth]
            depth -= 1
            i += 1
        else:
            i += 1
    return {"metrics": metrics, "selectors": selectors, "grouping": grouping, "made": made}


# ----------------------------------------------------------------------------- Grafana side

VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute(expr, values):
    """Replaces Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) by values[x] or BUILTINS[x]."""
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in values:
            return values[name]
        if name in BUILTINS:
            return BUILTINS[name]
        unknown.append(name)
        return m.group(0)

    out = VAR_RE.sub(repl, expr)
    return out, unknown


LABEL_VALUES_RE = re.compile(r"^\s*label_values\s*\((.*)\)\s*$", re.S)
QUERY_RESULT_RE = re.compile(r"^\s*query_result\s*\((.*)\)\s*$", re.S)


def variable_query(var):
    q = var.get("query")
    if isinstance(q, dict):
        q = q.get("query", "")
    return q if isinstance(q, str) else ""


def split_label_values(args):
    """`METRIC_SELECTOR, LABEL` or `LABEL` -> (selector or None, label)."""
    depth = 0
    in_str = None
    cut = None
    for k, ch in enumerate(args):
        if in_str:
            if ch == "\\":
                continue
            if ch == in_str:
                in_str = None
        elif ch in "\"'`":
            in_str = ch
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            cut = k
    if cut is None:
        return None, args.strip()
    return args[:cut].strip(), args[cut + 1:].strip()


def walk_panels(panels, path=()):
    """Every panel with its path of titles. A collapsed row holds its panels; an open row is
    followed by them in the same list, so they are named after it too."""
    row = ()
    for p in panels or []:
        title = p.get("title") or f"panel {p.get('id', '?')}"
        if p.get("type") == "row":
            row = (title,)
            yield p, path + row
            yield from walk_panels(p.get("panels"), path + row)
        else:
            yield p, path + row + (title,)
            yield from walk_panels(p.get("panels"), path + row + (title,))


def collect(dashboard):
    """[(where, kind, text)] with kind "expr" (PromQL) or "label_values" ((selector, label))."""
    out = []
    templ = dashboard.get("templating", {}).get("list", [])
    for var in templ:
        if var.get("type") != "query":
            continue
        where = f"variable ${var.get('name')}"
        q = variable_query(var).strip()
        m = LABEL_VALUES_RE.match(q)
        if m:
            out.append((where, "label_values", split_label_values(m.group(1))))
            continue
        m = QUERY_RESULT_RE.match(q)
        if m:
            out.append((where, "expr", m.group(1)))
        elif q and not re.match(r"^\s*(label_names|metrics)\s*\(", q):
            out.append((where, "expr", q))
    panels = list(dashboard.get("panels", []))
    for r in dashboard.get("rows", []):  # pre-5.0 layout
        panels.extend(r.get("panels", []))
    for panel, path in walk_panels(panels):
        ds = panel.get("datasource")
        for t in panel.get("targets", []) or []:
            tds = t.get("datasource") or ds
            if isinstance(tds, dict) and tds.get("type") not in (None, "prometheus"):
                continue
            expr = t.get("expr")
            if isinstance(expr, str) and expr.strip():
                where = " / ".join(path) + f" [{t.get('refId', '?')}]"
                out.append((where, "expr", expr))
    return out


# ----------------------------------------------------------------------------- /metrics side

SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"(?:[^"\\]|\\.)*"')
LABEL_VALUE_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


class Exposition:
    """The names, types and label names of a Prometheus text exposition."""

    def __init__(self, text):
        self.types = {}  # name -> type, from "# TYPE"
        self.labels = {}  # sample name -> {label names}
        self.values = {}  # (sample name, label) -> [values]
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("# TYPE "):
                parts = line.split()
                if len(parts) >= 4:
                    self.types[parts[2]] = parts[3]
                continue
            if not line or line.startswith("#"):
                continue
            m = SAMPLE_RE.match(line)
            if not m:
                continue
            name = m.group(1)
            labels = self.labels.setdefault(name, set())
            for lm in LABEL_VALUE_RE.finditer(m.group(3) or ""):
                labels.add(lm.group(1))
                vals = self.values.setdefault((name, lm.group(1)), [])
                if lm.group(2) not in vals:
                    vals.append(lm.group(2))

    def lookup(self, name):
        """(present, problem): whether `name` can be queried, and why not."""
        if name in self.labels:
            if self.types.get(name) == "histogram":
                return False, f"{name} is a histogram: query {name}_bucket, _sum or _count"
            return True, None
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)] if name.endswith(suffix) else None
            if base and self.types.get(base) in ("histogram", "gaugehistogram"):
                return True, None
            if base and suffix != "_bucket" and self.types.get(base) == "summary":
                return True, None
        if name in self.types:
            if self.types[name] == "histogram":
                return False, f"{name} is a histogram: query {name}_bucket, _sum or _count"
            return True, None
        return False, f"{name} is not in /metrics"

    def label_names(self, name):
        """Label names seen on `name`'s samples, or None when it has none to judge by."""
        if name not in self.labels:
            return None
        return set(self.labels[name])


def read_metrics(src):
    if re.match(r"^https?://", src):
        with urllib.request.urlopen(src, timeout=30) as r:
            return r.read().decode("utf-8", "replace")
    with open(src, encoding="utf-8") as f:
        return f.read()


# ----------------------------------------------------------------------------- promtool


def find_promtool(explicit):
    if explicit:
        return explicit
    tool = os.path.join(REPO, "tests", "deploy", "tool.sh")
    if os.access(tool, os.X_OK):
        r = subprocess.run([tool, "promtool"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[-1]
        sys.stderr.write(f"tests/deploy/tool.sh promtool failed:\n{r.stderr}")
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d, "promtool")
        if os.access(p, os.X_OK):
            return p
    return None


def rules_yaml(exprs):
    lines = ["groups:", "  - name: dashboard-check", "    rules:"]
    for k, e in enumerate(exprs):
        lines.append(f"      - record: dashboard_check:expr_{k:03d}")
        # A JSON string is a valid YAML double-quoted scalar.
        lines.append(f"        expr: {json.dumps(e)}")
    return "\n".join(lines) + "\n"


def promtool_check(promtool, exprs):
    """None when promtool accepts all of `exprs`, else its output."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "dashboard-rules.yml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(rules_yaml(exprs))
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if r.returncode == 0:
            return None
        lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("Checking ") and ln != "FAILED:"]
        return "\n    ".join(lines) or f"promtool exited {r.returncode}"


# ----------------------------------------------------------------------------- the check


def variable_values(dashboard, expo):
    """A valid value for every template variable."""
    values = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name")
        if not name:
            continue
        value = None
        if var.get("type") == "query":
            m = LABEL_VALUES_RE.match(variable_query(var))
            if m:
                sel, label = split_label_values(m.group(1))
                metric = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", sel or "")
                names = [metric.group(0)] if metric else [k for k in expo.labels]
                for nm in names:
                    vals = expo.values.get((nm, label))
                    if vals:
                        value = vals[0]
                        break
        elif var.get("type") in ("custom", "constant", "textbox", "interval"):
            cur = var.get("current", {}).get("value")
            if isinstance(cur, list):
                cur = cur[0] if cur else None
            value = cur or var.get("query", "").split(",")[0].strip() or None
            if value == "$__all":
                value = None
        elif var.get("type") == "datasource":
            value = "prometheus"
        if value is None:
            value = "5m" if var.get("type") == "interval" else "x"
        values[name] = value
    return values


def check(dashboard, expo, promtool, source_text):
    problems = []
    values = variable_values(dashboard, expo)
    items = collect(dashboard)
    exprs = []  # (where, substituted PromQL)
    missing = {}  # metric -> [where]
    label_issues = []

    def need_metric(name, where):
        ok, why = expo.lookup(name)
        if ok:
            return True
        if name in EVENT_ONLY:
            if source_text is not None and f'"{name}"' not in source_text:
                missing.setdefault(
                    f"{name} (listed in EVENT_ONLY but not declared in the server's source)", []
                ).append(where)
            return False
        missing.setdefault(why, []).append(where)
        return False

    def need_label(metric, label, where, context):
        if (metric, label) in FUTURE_LABELS:
            return
        have = expo.label_names(metric)
        if have is None:
            return  # no samples to judge by
        if label not in have:
            label_issues.append(f"{where}: {context} label {label!r} is not on {metric} "
                                f"(it has: {', '.join(sorted(have)) or 'no labels'})")

    for where, kind, item in items:
        if kind == "label_values":
            sel, label = item
            if not sel:
                continue  # label_values(label): any metric
            text, unknown = substitute(sel, values)
            if unknown:
                problems.append(f"{where}: unknown variable(s) {', '.join(unknown)}")
                continue
            exprs.append((where, text))
            try:
                a = analyse(text)
            except PromQLError as e:
                problems.append(f"{where}: cannot read {text!r}: {e}")
                continue
            for m in sorted(a["metrics"]):
                if need_metric(m, where):
                    need_label(m, label, where, "label_values")
            continue
        text, unknown = substitute(item, values)
        if unknown:
            problems.append(f"{where}: unknown variable(s) {', '.join(unknown)}")
            continue
        exprs.append((where, text))
        try:
            a = analyse(text)
        except PromQLError as e:
            problems.append(f"{where}: cannot read {text!r}: {e}")
            continue
        present = [m for m in sorted(a["metrics"]) if need_metric(m, where)]
        for metric, labels in a["selectors"]:
            if metric in present:
                for label in sorted(labels):
                    need_label(metric, label, where, "matcher")
        known = set(a["made"]) | {"le"}
        judged = False
        for m in present:
            got = expo.label_names(m)
            if got is not None:
                known |= got
                judged = True
        if judged:
            for label in sorted(a["grouping"] - known):
                if not any((m, label) in FUTURE_LABELS for m in a["metrics"]):
                    label_issues.append(f"{where}: grouping label {label!r} is on none of "
                                        f"{', '.join(sorted(a['metrics']))}")

    # (a) promtool parses everything at once; on failure, one by one to name the culprits.
    unparsable = []
    if promtool is not None and exprs:
        out = promtool_check(promtool, [e for _, e in exprs])
        if out is not None:
            for where, e in exprs:
                single = promtool_check(promtool, [e])
                if single is not None:
                    unparsable.append(f"{where}:\n    {e}\n    promtool: {single}")
            if not unparsable:
                unparsable.append(f"promtool refused the rules file:\n{out}")

    for why, wheres in sorted(missing.items()):
        uniq = sorted(set(wheres))
        problems.append(f"missing metric: {why}\n    used by: " + "\n             ".join(uniq))
    problems.extend(f"label: {x}" for x in label_issues)
    problems.extend(f"unparsable: {x}" for x in unparsable)
    return problems, exprs, values


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dashboard", help="the dashboard JSON")
    ap.add_argument("--metrics", help="a /metrics text file, or its http(s) URL")
    ap.add_argument("--promtool", help="promtool binary (default: tests/deploy/tool.sh promtool, "
                                       "then PATH)")
    ap.add_argument("--source", default=os.path.join(REPO, "src", "metrics.rs"),
                    help="the server's metric declarations (for EVENT_ONLY names)")
    ap.add_argument("--self-test", action="store_true", help="test the extractor and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every expression")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.dashboard or not args.metrics:
        ap.error("--dashboard and --metrics are required (or --self-test)")
    try:
        with open(args.dashboard, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        print(f"cannot read dashboard {args.dashboard}: {e}", file=sys.stderr)
        return 2
    try:
        expo = Exposition(read_metrics(args.metrics))
    except (OSError, ValueError) as e:
        print(f"cannot read metrics {args.metrics}: {e}", file=sys.stderr)
        return 2
    if not expo.labels:
        print(f"{args.metrics} holds no samples", file=sys.stderr)
        return 2
    promtool = find_promtool(args.promtool)
    if promtool is None:
        print("promtool not found: pass --promtool PATH (tests/deploy/tool.sh promtool fetches "
              "one)", file=sys.stderr)
        return 2
    source_text = None
    if args.source and os.path.isfile(args.source):
        with open(args.source, encoding="utf-8") as f:
            source_text = f.read()
    problems, exprs, values = check(dashboard, expo, promtool, source_text)
    if args.verbose:
        for where, e in exprs:
            print(f"{where}:\n    {' '.join(e.split())}")
    names = set()
    for _, e in exprs:
        try:
            names |= analyse(e)["metrics"]
        except PromQLError:
            pass
    print(f"{args.dashboard}: {len(exprs)} expressions, {len(names)} metric names, variables "
          + ", ".join(f"${k}={v}" for k, v in sorted(values.items())))
    absent_ok = sorted(n for n in names if n in EVENT_ONLY and not expo.lookup(n)[0])
    for n in absent_ok:
        print(f"note: {n} is not in /metrics yet ({EVENT_ONLY[n]}); allowed")
    if problems:
        print(f"FAILED: {len(problems)} problem(s)")
        for p in problems:
            print(f"- {p}")
        return 1
    print("OK: promtool parses every expression and every metric and label exists")
    return 0


# ----------------------------------------------------------------------------- self-test


def self_test():
    failures = []

    def eq(what, got, want):
        if got != want:
            failures.append(f"{what}: got {got!r}, want {want!r}")

    cases = [
        # (expr, metrics, grouping, selector labels (union), made)
        ('sum by (model) (rate(wattserve_requests_total{model=~"$model",status=~"5.."}[5m]))',
         {"wattserve_requests_total"}, {"model"}, {"model", "status"}, set()),
        # Strings, even ones that look like PromQL, are not metrics; `le` is a label.
        ('histogram_quantile(0.95, sum by (le, model) (rate(foo_bucket{a="sum(bar) by (x)",'
         'b=~\'q\\\'z\'}[1h30m])))',
         {"foo_bucket"}, {"le", "model"}, {"a", "b"}, set()),
        # Vector matching and modifiers; offset durations; bool.
        ('a / on (model) group_left (source) b offset 1h > bool 0.5',
         {"a", "b"}, {"model", "source"}, set(), set()),
        ('max_over_time(x[1h:5m]) unless ignoring(device) y and z or w',
         {"x", "y", "z", "w"}, {"device"}, set(), set()),
        # __name__ selectors, labels named like keywords.
        ('{__name__="baz", job="x", by="y"}', {"baz"}, set(), {"job", "by"}, set()),
        # Trailing grouping, numbers of every form, inf/nan.
        ('sum(rate(x[5m])) without (instance) * 1e3 + 0x1F - .5 * 1.5e-3 + Inf - NaN + inf',
         {"x"}, {"instance"}, set(), set()),
        ('sum(x) by (model) / count without(kind) (y)', {"x", "y"}, {"model", "kind"}, set(),
         set()),
        # Label-making functions.
        ('sum by (dst) (label_replace(up{job="a"}, "dst", "$1", "src", "(.*)"))',
         {"up"}, {"dst"}, {"job"}, {"dst"}),
        ('count_values("v", x)', {"x"}, set(), set(), {"v"}),
        ('label_join(m, "joined", ",", "a", "b")', {"m"}, set(), set(), {"joined"}),
        # Comments, recording-rule names with colons, functions without metrics, @.
        ('job:rate5m:sum # a comment with metric_in_comment\n + time() + vector(1)',
         {"job:rate5m:sum"}, set(), set(), set()),
        ('rate(x[5m] @ end()) + rate(y[5m] offset -1m @ 1609746000)', {"x", "y"}, set(), set(),
         set()),
        ('topk(5, sum by (model) (x)) and quantile(0.9, y)', {"x", "y"}, {"model"}, set(), set()),
        ('sum by(model)(x)', {"x"}, {"model"}, set(), set()),
        ('absent(nonexistent{job="a"})', {"nonexistent"}, set(), {"job"}, set()),
        ('`raw` + "s"', set(), set(), set(), set()),
        # Keywords and aggregations ignore case.
        ('SUM BY (model) (x) AND Y OFFSET 5m', {"x", "Y"}, {"model"}, set(), set()),
    ]
    for expr, metrics, grouping, labels, made in cases:
        try:
            a = analyse(expr)
        except PromQLError as e:
            failures.append(f"{expr!r}: {e}")
            continue
        eq(f"metrics of {expr!r}", a["metrics"], metrics)
        eq(f"grouping of {expr!r}", a["grouping"], grouping)
        sel = set()
        for _, ls in a["selectors"]:
            sel |= ls
        eq(f"matcher labels of {expr!r}", sel, labels)
        eq(f"made labels of {expr!r}", a["made"], made)
    for bad in ('x{a=}', 'x{a="b"', 'x[5m', 'sum by (1) (x)'):
        try:
            analyse(bad)
            failures.append(f"{bad!r} was accepted")
        except PromQLError:
            pass

    # Variables.
    vals = {"model": "minilm"}
    eq("substitute", substitute('x{model=~"$model",a="${model}",b="${model:regex}",'
                                'c="[[model]]"}[$__rate_interval] offset $__interval', vals),
       ('x{model=~"minilm",a="minilm",b="minilm",c="minilm"}[5m] offset 5m', []))
    eq("unknown variable", substitute("x[$nope]", vals)[1], ["nope"])
    eq("label_values split", split_label_values('wattserve_requests_total{a="x,y"}, model'),
       ('wattserve_requests_total{a="x,y"}', "model"))
    eq("label_values one arg", split_label_values("model"), (None, "model"))

    # The /metrics side.
    expo = Exposition(
        "# HELP h a histogram\n# TYPE h histogram\n"
        'h_bucket{model="m",le="0.1"} 1\nh_bucket{model="m",le="+Inf"} 1\n'
        'h_sum{model="m"} 0.05\nh_count{model="m"} 1\n'
        "# TYPE c counter\n"
        'c{model="m",status="200"} 3\n'
        "# TYPE empty_hist histogram\n"
        "# TYPE g gauge\ng 1\n"
    )
    eq("bucket", expo.lookup("h_bucket")[0], True)
    eq("count", expo.lookup("h_count")[0], True)
    eq("bare histogram", expo.lookup("h")[0], False)
    eq("histogram by TYPE only", expo.lookup("empty_hist_sum")[0], True)
    eq("counter", expo.lookup("c")[0], True)
    eq("gauge", expo.lookup("g")[0], True)
    eq("absent", expo.lookup("nope_total")[0], False)
    eq("labels", expo.label_names("c"), {"model", "status"})

    # A whole dashboard: nested rows, a variable, a wrong metric and a wrong label.
    dash = {
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "model", "type": "query",
             "query": {"query": "label_values(c, model)", "refId": "X"}},
        ]},
        "panels": [
            {"type": "row", "title": "R", "collapsed": True, "panels": [
                {"title": "ok", "targets": [
                    {"expr": 'sum by (model) (rate(c{model=~"$model"}[$__rate_interval]))'},
                    {"expr": "histogram_quantile(0.5, sum by (le) (rate(h_bucket[5m])))"}]},
                {"title": "bad", "targets": [
                    {"refId": "A",
                     "expr": 'sum by (tenant) (rate(c{kind="x"}[5m])) + h + typo_total'}]},
                {"title": "loki", "datasource": {"type": "loki"},
                 "targets": [{"expr": '{app="x"} |= "y"'}]},
            ]},
        ],
    }
    problems, exprs, values = check(dash, expo, None, None)
    eq("variable value", values.get("model"), "m")
    eq("expressions", len(exprs), 4)
    text = "\n".join(problems)
    for want in ("typo_total is not in /metrics", "h is a histogram", "'kind' is not on c",
                 "grouping label 'tenant'"):
        if want not in text:
            failures.append(f"dashboard check misses {want!r}; got:\n{text}")
    if "R / bad [A]" not in text:
        failures.append(f"problems are not named by row / panel [refId]:\n{text}")
    if "R / ok" in text:
        failures.append(f"dashboard check flags the good panel:\n{text}")
    eq("problem count", len(problems), 4)

    # EVENT_ONLY names: allowed when absent, but must be declared in the source.
    ev = next(iter(EVENT_ONLY))
    dash2 = {"panels": [{"title": "p", "targets": [{"expr": f"rate({ev}[5m])"}]}]}
    eq("event-only allowed", check(dash2, expo, None, f'pub const X: &str = "{ev}";')[0], [])
    eq("event-only undeclared", len(check(dash2, expo, None, "")[0]), 1)

    if failures:
        print("SELF-TEST FAILED:")
        for f in failures:
            print(f"- {f}")
        return 1
    print(f"self-test OK ({len(cases)} expressions and the dashboard walk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
