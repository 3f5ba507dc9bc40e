#!/usr/bin/env python3
"""Finds import cycles among the source files of each crate of the workspace.

A file is one module (`foo.rs` or `foo/mod.rs`). File A depends on file B when A names
something in B: `use crate::b::…`, a path `crate::b::…`, `super::…` or `self::…` resolved to
the deepest module file that exists. Test code is left out (`#[cfg(test)] mod tests { … }`
blocks and `tests.rs` files), and so is a module naming its own direct submodules (declaring
and re-exporting children is structure, not a dependency). Prints every cycle and exits 1 if
there is one.

Usage: scripts/module-cycles.py [CRATE_SRC_DIR ...]   (default: every crate's src/)
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["repo-format/src", "hashblocks/src", "fuse/src", "cli/src", "cli/ssh/src",
           "cli/libvirt-xml/src", "cli/s3/src", "serve/src", "tests/support/src"]

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP_RE = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};", re.S)


def module_of(src: Path, f: Path):
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)]` items (a `mod … { … }` block or a `mod x;` line)."""
    out, i = [], 0
    while True:
        j = text.find("#[cfg(test)]", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        k = j + len("#[cfg(test)]")
        semi, brace = text.find(";", k), text.find("{", k)
        if brace < 0 or (0 <= semi < brace):
            i = semi + 1
            continue
        depth, p = 0, brace
        while p < len(text):
            if text[p] == "{":
                depth += 1
            elif text[p] == "}":
                depth -= 1
                if depth == 0:
                    break
            p += 1
        i = p + 1


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def resolve(mod, head, rest, modules):
    if head == "crate":
        base = ()
    elif head == "self":
        base = mod
    else:
        base = mod[:-1]
    path = list(base)
    for seg in rest:
        if seg == "super":
            path = path[:-1]
        else:
            path.append(seg)
    while tuple(path) not in modules and path:
        path.pop()
    return tuple(path)


def check(src: Path):
    files = {}
    for f in sorted(src.rglob("*.rs")):
        if f.name == "tests.rs" or "fuzz" in f.parts:
            continue
        files[module_of(src, f)] = f
    modules = set(files)
    edges = {m: set() for m in modules}
    for mod, f in files.items():
        text = strip_comments(strip_tests(f.read_text()))
        refs = []
        for m in USE_GROUP_RE.finditer(text):
            head, prefix, inner = m.group(1), m.group(2), m.group(3)
            for item in re.split(r"[,\s]+", inner):
                item = item.strip()
                if not item or item == "self":
                    refs.append((head, prefix.split("::")[1:]))
                    continue
                first = item.split("::")[0].split(" as ")[0].strip("{} ")
                if first:
                    refs.append((head, prefix.split("::")[1:] + item.split("::")[:-1] + [first]))
        for m in PATH_RE.finditer(text):
            refs.append((m.group(1), m.group(2).split("::")[1:]))
        for head, rest in refs:
            target = resolve(mod, head, rest, modules)
            if target == mod:
                continue
            # A module naming its own direct child is structure, not a dependency.
            if len(target) == len(mod) + 1 and target[: len(mod)] == mod:
                continue
            edges[mod].add(target)
    return files, edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main():
    dirs = sys.argv[1:] or [d for d in DEFAULT if (ROOT / d).is_dir()]
    bad = False
    for d in dirs:
        src = ROOT / d
        files, edges = check(src)
        found = cycles(edges)
        n_edges = sum(len(e) for e in edges.values())
        if found:
            bad = True
            for comp in found:
                names = sorted(str(files[m].relative_to(ROOT)) for m in comp)
                print(f"module-cycles: {d}: import cycle among {', '.join(names)}")
                for m in comp:
                    for t in sorted(edges[m] & set(comp)):
                        print(f"    {files[m].relative_to(ROOT)} -> {files[t].relative_to(ROOT)}")
        else:
            print(f"module-cycles: {d}: {len(files)} files, {n_edges} imports, no cycle")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
