"""Builds tf_dlthesis's API reference (HTML) from its docstrings with pdoc.

    pip install -e ".[docs]"
    python docs/api/build.py            # writes docs/api/html/ (open index.html)
    python docs/api/build.py -o DIR     # elsewhere

The reference covers every public module (no `_private` module pages: what a
subpackage re-exports is documented on the subpackage's own page). Subpackages
re-export their API as `from .module import Name as Name` (DESIGN.md's style; the
`as Name` form is PEP 484's marker of an explicit re-export); pdoc documents a
package's imported names only when they are in `__all__`, so for a package without
`__all__` the build lists those re-exports as its `__all__` before rendering.

The build fails (exit status 1, one line per problem) on:

* any warning pdoc raises (a module that fails to import, an annotation that does
  not resolve, ...);
* a broken cross-reference: a `tf_dlthesis.…` name in backticks that pdoc could not
  link to a documented object.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "html"
PACKAGE = "tf_dlthesis"
#: Modules left out of the reference: private ones (any `_name` component, `__main__`).
EXCLUDE = r"tf_dlthesis(\..*)?\._.*"

_CODE = re.compile(r"<code>(.*?)</code>", re.S)
_TAG = re.compile(r"<[^>]+>")


def _reexports(module) -> list:
    """Names a package's `__init__` re-exports as `from x import Name as Name` (in order)."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith("__init__.py"):
        return []
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names += [a.asname for a in node.names if a.asname is not None and a.asname == a.name]
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def _set_all(modules) -> None:
    """Gives each package without `__all__` one: its re-exports plus its public submodules
    (pdoc walks only the submodules a package's `__all__` names)."""
    import pkgutil

    for name in modules:
        module = importlib.import_module(name)
        if hasattr(module, "__all__") or not hasattr(module, "__path__"):
            continue
        names = _reexports(module)
        if names:
            subs = [m.name for m in pkgutil.iter_modules(module.__path__) if not m.name.startswith("_")]
            module.__all__ = names + [m for m in subs if m not in names]


def broken_references(out_dir: Path) -> list:
    """`tf_dlthesis.…` names in backticks that pdoc left unlinked, as "page: name" lines."""
    problems = []
    for page in sorted(out_dir.rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        for match in _CODE.finditer(html):
            inner = match.group(1)
            text = _TAG.sub("", inner).strip()
            if not re.fullmatch(r"tf_dlthesis(\.[A-Za-z_][A-Za-z0-9_]*)+(\(\))?", text):
                continue
            before = html[max(0, match.start() - 300): match.start()]
            linked = "<a " in inner or before.rfind("<a ") > before.rfind("</a>")
            if not linked:
                problems.append(f"{page.relative_to(out_dir)}: unresolved reference `{text}`")
    return problems


def build(out_dir: Path | str = DEFAULT_OUT) -> list:
    """Renders the reference into `out_dir`; returns the problems (empty: a clean build).

    Example:

    >>> # problems = build("/tmp/api")   # then open /tmp/api/index.html
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import pdoc
    import pdoc.extract
    import pdoc.render

    out_dir = Path(out_dir)
    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.import_module(PACKAGE)
        modules = pdoc.extract.walk_specs([PACKAGE, "!" + EXCLUDE])
        _set_all(modules)
        version = importlib.import_module(PACKAGE).__version__
        pdoc.render.configure(docformat="google", footer_text=f"tf_dlthesis {version}", show_source=True)
        pdoc.pdoc(PACKAGE, "!" + EXCLUDE, output_directory=out_dir)
    for w in caught:
        if "pdoc" in str(w.filename) or issubclass(w.category, UserWarning) and "pdoc" in str(w.message):
            problems.append(f"pdoc warning: {' '.join(str(w.message).split())[:400]}")
    problems += broken_references(out_dir)
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build tf_dlthesis's API reference with pdoc.")
    parser.add_argument("-o", "--out", default=str(DEFAULT_OUT), help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    problems = build(args.out)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"API reference: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"API reference: {Path(args.out).resolve() / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
