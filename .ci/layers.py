#!/usr/bin/env python3
"""The layering check: every `crate::` import in the library's production code
points to its own layer or one below, and no modules import each other in a
circle. The layers are read from the diagram in docs/architecture.md (the
fenced block after the line that names this script), so the picture and the
check cannot disagree. A failure names each offending import by file and line.

    python3 .ci/layers.py              # check src/ against docs/architecture.md
    python3 .ci/layers.py --self-test  # prove it fails on a circle added by hand

Test code is not checked: `#[cfg(test)]` modules, `tests.rs` files, the fast
tier (`src/fast_tier/`) and its harness (`src/test_support.rs`) may reach any
module, as tests do.
"""

import os
import re
import shutil
import sys
import tempfile
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_ONLY = {"fast_tier", "test_support"}
# The crate roots declare the modules; they are not a module of their own.
ROOTS = {"lib", "main"}


def read_layers(doc):
    """[(layer name, [modules])], top first, from the fenced block after the
    line naming `layers.py`."""
    lines = open(doc, encoding="utf-8").read().splitlines()
    start = next((i for i, line in enumerate(lines) if "layers.py" in line), None)
    if start is None:
        sys.exit(f"{doc}: no line names layers.py, so there is no layer diagram to check against")
    fence = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    layers = []
    for line in lines[fence + 1 :]:
        if line.startswith("```"):
            break
        # `name   module module ...   (comment)`; arrows and rules are drawing.
        text = re.sub(r"\(.*?\)", "", line).strip()
        if not text or not re.match(r"^[a-z]", text):
            continue
        name, *modules = text.split()
        layers.append((name.rstrip(":"), [m for m in modules if re.match(r"^[a-z_]+$", m)]))
    if not layers:
        sys.exit(f"{doc}: the layer diagram is empty")
    return layers


def production_text(source):
    """The source with comments and `#[cfg(test)]` items blanked out, line
    numbers kept."""
    source = re.sub(r"//[^\n]*", "", source)
    out, pending, skipping, opened, depth = [], False, False, False, 0
    for line in source.split("\n"):
        stripped = line.strip()
        if pending and not skipping and stripped.startswith("#["):
            out.append("")
            continue
        if pending and not skipping and stripped:
            skipping, opened, depth = True, False, 0
        if skipping:
            for char in line:
                if char == "{":
                    depth, opened = depth + 1, True
                elif char == "}":
                    depth -= 1
                elif char == ";" and not opened:
                    opened, depth = True, 0
            out.append("")
            if opened and depth <= 0:
                pending = skipping = False
            continue
        if stripped.startswith("#[cfg(test)]"):
            pending = True
            out.append("")
            continue
        out.append(line)
    return "\n".join(out)


def group_heads(text, at):
    """The first path segment of each item in the `{...}` group at `at`."""
    depth, item, items = 0, "", []
    for char in text[at:]:
        if char == "{":
            depth += 1
            if depth == 1:
                continue
        elif char == "}":
            depth -= 1
            if depth == 0:
                items.append(item)
                break
        elif char == "," and depth == 1:
            items.append(item)
            item = ""
            continue
        item += char
    return [m.group(1) for m in (re.match(r"\s*(\w+)", i) for i in items) if m]


def imports(src):
    """{(from module, to module): [file:line, ...]} over production code."""
    found = defaultdict(list)
    for folder, _, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith(".rs") or name == "tests.rs":
                continue
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, src)
            module = relative.split(os.sep)[0].removesuffix(".rs")
            if module in ROOTS or module in TEST_ONLY:
                continue
            text = production_text(open(path, encoding="utf-8").read())
            for match in re.finditer(r"\bcrate::(\{|\w+)", text):
                targets = (
                    group_heads(text, match.start(1)) if match.group(1) == "{" else [match.group(1)]
                )
                line = text.count("\n", 0, match.start()) + 1
                for target in targets:
                    if target not in (module, "self"):
                        found[(module, target)].append(f"src/{relative}:{line}")
    return found


def modules_of(src):
    return {
        entry.removesuffix(".rs")
        for entry in os.listdir(src)
        if (entry.endswith(".rs") or os.path.isdir(os.path.join(src, entry)))
    } - ROOTS - TEST_ONLY


def circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {b for a in graph for b in graph[a]}):
        if v not in index:
            visit(v)
    return found


def check(src, doc):
    layers = read_layers(doc)
    rank = {}
    for depth, (_, members) in enumerate(layers):
        for module in members:
            rank[module] = depth
    problems = []
    for module in sorted(modules_of(src) - set(rank)):
        problems.append(f"src/{module}: module `{module}` is in no layer of {os.path.relpath(doc, ROOT)}")
    for module in sorted(set(rank) - modules_of(src)):
        problems.append(f"{os.path.relpath(doc, ROOT)}: layer lists `{module}`, which is not a module in src/")
    edges = imports(src)
    for (a, b), places in sorted(edges.items()):
        if a in rank and b in rank and rank[b] < rank[a]:
            for place in places:
                problems.append(
                    f"{place}: `{a}` ({layers[rank[a]][0]}) imports `crate::{b}` ({layers[rank[b]][0]}), a layer above it"
                )
    for component in circles(edges):
        problems.append("circle between " + ", ".join(f"`{m}`" for m in component) + ":")
        inside = set(component)
        for (a, b), places in sorted(edges.items()):
            if a in inside and b in inside:
                problems.append(f"    {places[0]}: `{a}` imports `crate::{b}`" + (f" (and {len(places) - 1} more)" if len(places) > 1 else ""))
    return layers, edges, problems


def self_test():
    """Copies src/ and breaks the rules by hand, twice: `domain` (the bottom)
    imports the HTTP layer (upward, and a circle through every layer between),
    and `reconcile` imports `drift` (one layer, no upward import, but a circle
    with `drift -> reconcile`). The check must fail on both and name the
    import added."""
    cases = [
        ("domain/mod.rs", "use crate::http::ApiError;", "domain", "http", True),
        ("reconcile/mod.rs", "use crate::drift::DriftWatcher;", "reconcile", "drift", False),
    ]
    print("layers self-test: imports added by hand fail the check")
    for path, line_text, importer, imported, upward in cases:
        with tempfile.TemporaryDirectory() as scratch:
            copy = os.path.join(scratch, "src")
            shutil.copytree(os.path.join(ROOT, "src"), copy)
            target = os.path.join(copy, *path.split("/"))
            with open(target, "a", encoding="utf-8") as file:
                file.write(f"\n#[allow(unused_imports)]\n{line_text}\n")
            line = open(target, encoding="utf-8").read().count("\n")
            _, _, problems = check(copy, os.path.join(ROOT, "docs", "architecture.md"))
            place = f"src/{path}:{line}:"
            named = [p for p in problems if place in p and f"crate::{imported}" in p]
            circle = [p for p in problems if p.startswith("circle between") and f"`{importer}`" in p and f"`{imported}`" in p]
            if not circle or (upward and not any(p.startswith(place) for p in named)) or not named:
                print(f"self-test FAILED: `{line_text}` in src/{path} was not reported", file=sys.stderr)
                print("\n".join(problems) or "(no problem reported)", file=sys.stderr)
                return 1
            print(f"  added `{line_text}` to src/{path}:")
            for problem in named + circle:
                print("    " + problem.strip())
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    layers, edges, problems = check(os.path.join(ROOT, "src"), os.path.join(ROOT, "docs", "architecture.md"))
    if problems:
        print("layering check failed (docs/architecture.md shows the intended layers):", file=sys.stderr)
        for problem in problems:
            print("  " + problem, file=sys.stderr)
        return 1
    modules = sum(len(m) for _, m in layers)
    print(f"layers OK: {modules} modules in {len(layers)} layers, {len(edges)} imports between modules, none upward, no circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
