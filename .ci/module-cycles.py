#!/usr/bin/env python3
"""Fails when the library's modules import each other in a cycle, or a layer imports from one
above it.

Every `crate::path` (or `super::path`, made absolute) a module names outside its
`#[cfg(test)] mod tests` and its comments (in `use` lines, grouped
`use crate::{a, b::c}` included, or inline) is an edge from that module to the deepest module the
path names. A module may use its own submodules and its parents' items freely; any other cycle is
reported with the edges that close it. The layers are the top-level folders, top to bottom, as
`src/lib.rs`'s layout map lists them (`LAYERS`); an edge from a lower layer to a higher one is
reported too. Standard library only: `python3 .ci/module-cycles.py [src]`.
"""
import os
import re
import sys


def modules(root):
    """{module path: source} for every .rs file under root (`a/mod.rs` is `a`, lib.rs the crate)."""
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            with open(path, encoding="utf-8") as f:
                found["::".join(parts)] = f.read()
    return found


def without_tests(source):
    """The source up to its unit-test module (tests may use anything)."""
    return re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", source)[0]


def expand_group(text):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"] (prefix before the braces kept)."""
    out, depth, start, prefix = [], 0, 0, ""
    brace = text.find("{")
    if brace < 0:
        return [text.strip()]
    prefix, inner = text[:brace], text[brace + 1 : text.rfind("}")]
    for i, ch in enumerate(inner + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            item = inner[start:i].strip()
            start = i + 1
            if item:
                out.extend(prefix + p for p in expand_group(item))
    return out


def without_comments(source):
    """The source without `//` comments (a `//` inside a string literal, e.g. a URL, is kept)."""
    kept = []
    for line in source.splitlines():
        quotes = 0
        for i in range(len(line) - 1):
            if line[i] == '"' and (i == 0 or line[i - 1] != "\\"):
                quotes += 1
            elif line[i : i + 2] == "//" and quotes % 2 == 0:
                line = line[:i]
                break
        kept.append(line)
    return "\n".join(kept)


def referenced_paths(source, module=""):
    """The crate paths `source` (the code of `module`) names, `super::` paths made absolute."""
    paths = []
    parents = module.split("::") if module else []
    for m in re.finditer(r"\bsuper((?:::super)*)::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", source):
        up = 1 + m.group(1).count("::super")
        if up <= len(parents):
            paths.append("::".join(parents[: len(parents) - up] + [m.group(2)]))
    # Grouped imports: `crate::{...}` or `crate::x::{...}` with balanced braces.
    for m in re.finditer(r"crate::((?:[a-z_][a-z0-9_]*::)*)\{", source):
        depth, i = 1, m.end()
        while depth and i < len(source):
            depth += {"{": 1, "}": -1}.get(source[i], 0)
            i += 1
        paths.extend(expand_group(m.group(1) + source[m.end() - 1 : i]))
    paths += re.findall(r"crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", source)
    return [re.sub(r"(^|::)self(?=::|$)", "", p).strip(":") for p in paths]


def edges_of(found):
    names = set(found)

    def resolve(path):
        segments = [s for s in path.split("::") if s]
        for k in range(len(segments), 0, -1):
            candidate = "::".join(segments[:k])
            if candidate in names:
                return candidate
        return None

    edges = {name: set() for name in names}
    for name, source in found.items():
        for path in referenced_paths(without_comments(without_tests(source)), name):
            target = resolve(path)
            # Its own submodules, itself and its ancestors are not edges of a layering.
            if target and target != name and not target.startswith(name + "::") \
                    and not name.startswith(target + "::"):
                edges[name].add(target)
    return edges


# Top to bottom; modules on one line are one layer (they may import each other, without cycles).
LAYERS = [
    ["app"],
    ["http"],
    ["engine"],
    ["store"],
    ["data", "history"],
    ["dsdl"],
    ["features", "model"],
    ["util"],
]


def layer_of(module):
    top = module.split("::")[0]
    for depth, layer in enumerate(LAYERS):
        if top in layer:
            return depth
    return None


def upward_edges(edges):
    """(from, to) pairs where a module imports from a layer above its own, and top-level modules
    missing from LAYERS (a new folder must be placed in a layer)."""
    upward, unplaced = [], set()
    for name, targets in edges.items():
        if name == "":
            continue
        if layer_of(name) is None:
            unplaced.add(name.split("::")[0])
            continue
        for target in targets:
            if target and layer_of(target) is not None and layer_of(target) < layer_of(name):
                upward.append((name, target))
    return sorted(upward), sorted(unplaced)


# Crates a module may name only inside some folders: the HTTP stack in `http` (and `app`, which
# starts the server), clap in `app` and the training recipe that derives its arguments.
CRATES_ONLY_IN = {
    r"\b(axum|axum_server|hyper|hyper_util|http_body|http_body_util|tower|tower_http|utoipa)::": ["http", "app"],
    r"\b(clap)::": ["app", "engine::recipe"],
}


def misplaced_crates(found):
    """(module, crate pattern) pairs where a module outside the allowed folders names the crate
    (comments aside)."""
    out = []
    for name, source in found.items():
        code = without_comments(source)
        for pattern, allowed in CRATES_ONLY_IN.items():
            if name == "" or any(name == a or name.startswith(a + "::") for a in allowed):
                continue
            m = re.search(pattern, code)
            if m:
                out.append((name, m.group(1) if m.groups() else m.group(0)))
    return sorted(out)


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(root):
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return result


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    found = modules(root)
    edges = edges_of(found)
    found_cycles = cycles(edges)
    for component in found_cycles:
        print("import cycle among: " + ", ".join(component), file=sys.stderr)
        for name in component:
            inside = sorted(t for t in edges[name] if t in component)
            print(f"  {name} -> {', '.join(inside)}", file=sys.stderr)
    upward, unplaced = upward_edges(edges)
    for name, target in upward:
        print(f"upward import: {name} -> {target} ({name.split('::')[0]} is below "
              f"{target.split('::')[0]} in the layers)", file=sys.stderr)
    for top in unplaced:
        print(f"module `{top}` is in no layer: add it to LAYERS in {sys.argv[0]}", file=sys.stderr)
    misplaced = misplaced_crates(found)
    for name, crate in misplaced:
        print(f"{name} uses `{crate}`, which belongs to another layer (CRATES_ONLY_IN in {sys.argv[0]})",
              file=sys.stderr)
    if found_cycles or upward or unplaced or misplaced:
        return 1
    print(f"module graph: {len(found)} modules, "
          f"{sum(len(e) for e in edges.values())} edges, no import cycle, no upward import, "
          f"HTTP and command-line crates only in their layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
