#!/usr/bin/env python3
# Usage: python3 scripts/module_graph.py crates/kv-node/src [--top]
"""Module dependency graph of a crate's src/ (one node per file module: `dir` for dir/mod.rs,
`dir/file` for the rest; tests.rs files and #[cfg(test)] blocks are left out as best we can)
and its cycles (strongly connected components). With --top, one node per top-level module."""
import os, re, sys
src = sys.argv[1]; top_only = '--top' in sys.argv
mods = {}
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith('.rs') or f == 'tests.rs': continue
        rel = os.path.relpath(os.path.join(root, f), src)[:-3]
        parts = rel.split(os.sep)
        if parts[-1] == 'mod': parts = parts[:-1]
        if parts in (['lib'], ['main']): continue
        name = '/'.join(parts[:1] if top_only else parts)
        mods.setdefault(name, []).append(os.path.join(root, f))
names = set(mods)
def resolve(path):  # ['routing','channel','X'] -> longest module prefix
    for n in range(len(path), 0, -1):
        cand = '/'.join(path[:n])
        if cand in names: return cand
    return None
def paths_in(group):  # expand a use-tree text into lists of segments
    group = re.sub(r'\s+', '', group)
    out = []
    def walk(prefix, text):
        depth = 0; start = 0; items = []
        for i, c in enumerate(text):
            if c == '{': depth += 1
            elif c == '}': depth -= 1
            elif c == ',' and depth == 0: items.append(text[start:i]); start = i + 1
        items.append(text[start:])
        for it in items:
            if not it: continue
            m = re.match(r'([^{]*?)(::)?\{(.*)\}$', it)
            if m and '{' in it:
                walk(prefix + [s for s in m.group(1).split('::') if s], m.group(3))
            else:
                out.append(prefix + [s for s in it.split(' as ')[0].split('::') if s])
    walk([], group)
    return out
def deps(name, files):
    out = set()
    here = name.split('/')
    for p in files:
        text = open(p).read()
        text = re.split(r'#\[cfg\(test\)\]\s*mod tests', text)[0]
        text = re.sub(r'//.*', '', text)
        for m in re.finditer(r'\b(crate|super)::(\{[^;]*?\}(?=\s*;)|[A-Za-z_][A-Za-z0-9_:]*)', text, re.S):
            base = [] if m.group(1) == 'crate' else here[:-1] if not p.endswith('mod.rs') else here[:-1]
            if m.group(1) == 'super' and p.endswith('mod.rs'): base = here[:-1]
            elif m.group(1) == 'super': base = here[:-1]
            for segs in paths_in(m.group(2)):
                r = resolve((base + segs) if not top_only else (base + segs)[:1])
                if r and r != name: out.add(r)
    return out
graph = {m: sorted(deps(m, ps)) for m, ps in mods.items()}
for m in sorted(graph): print(f"{m}: {' '.join(graph[m])}")
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in graph[v]:
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
for v in sorted(graph):
    if v not in idx: sc(v)
print("cycles:", sccs if sccs else "none")
