"""README's Python examples stay in step with the code.

The default suite checks every example statically: it parses, each name it imports from
`tf_dlthesis` exists, and each call of a library function or class binds its arguments to
the current signature (a renamed or removed keyword fails here). `pytest -m slow` runs each
example as a script in a fresh folder. README's "Requirements" line names the floors
of `setup.cfg`.
"""

import ast
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

#: What an example uses without making it (README says what it stands for), made for the slow
#: run: `images`/`labels` and `x_train`/`y_train` from digits, and the `cnn.keras` it loads.
PRELUDES = {
    "images": "from tf_dlthesis import data as _d\nimages, labels = _d.load_arrays('digits', 'train')\n"
              "images, labels = images[:64], labels[:64]\n",
    "x_train": "from tf_dlthesis import data as _d\nx_train, y_train = _d.load_arrays('digits', 'train')\n",
    "cnn.keras": "from tf_dlthesis import models as _m\n_m.build('cnn', (8, 8, 1), 10, seed=0).save('cnn.keras')\n",
}

def examples():
    """README's ```python blocks as (first line number, source)."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


EXAMPLES = examples()
IDS = [f"README.md:{line}" for line, _ in EXAMPLES]


def test_readme_has_examples():
    assert len(EXAMPLES) >= 10


def _library_names(tree):
    """`name -> object` for every name the example imports from tf_dlthesis."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tf_dlthesis":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    try:
                        obj = importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        raise AssertionError(f"`from {node.module} import {alias.name}`: no such name") from None
                else:
                    obj = getattr(module, alias.name)
                names[alias.asname or alias.name] = obj
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tf_dlthesis":
                    names[alias.asname or alias.name.split(".")[0]] = importlib.import_module(alias.name.split(".")[0])
    return names


def _resolve(node, names):
    """The library object a call's function expression names, or None."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, names)
        if owner is None:
            return None
        if not hasattr(owner, node.attr):
            raise AssertionError(f"{ast.unparse(node)}: {getattr(owner, '__name__', owner)!r} has no {node.attr!r}")
        return getattr(owner, node.attr)
    return None


def check_example(source):
    """Raise AssertionError naming the first call that no longer matches the library."""
    tree = ast.parse(source)
    names = _library_names(tree)
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _resolve(node.func, names)
        if target is None or not callable(target) or inspect.ismodule(target):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})
        except TypeError as err:
            raise AssertionError(f"{ast.unparse(node)[:120]}: {err}") from None
        checked += 1
    return checked


@pytest.mark.parametrize("source", [s for _, s in EXAMPLES], ids=IDS)
def test_example_matches_the_library(source):
    check_example(source)


def test_the_check_fails_on_a_renamed_keyword_or_name():
    good = "from tf_dlthesis import data\nds = data.training_dataset(x, y, batch_size=64, shuffle_seed=0, pad=1)\n"
    assert check_example(good) == 1
    with pytest.raises(AssertionError, match="padding"):
        check_example(good.replace("pad=", "padding="))
    with pytest.raises(AssertionError, match="training_datasets"):
        check_example(good.replace("training_dataset", "training_datasets"))
    with pytest.raises(AssertionError, match="shuffle_seed"):
        check_example(good.replace("shuffle_seed=0, ", ""))
    with pytest.raises(AssertionError, match="no such name"):
        check_example("from tf_dlthesis.data import no_such\n")

def _script(source):
    """The example with a prelude for each placeholder it uses and does not make."""
    tree = ast.parse(source)
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    files = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    used = (loaded - stored) | {f for f in files if f.endswith(".keras") and ".save(" not in source}
    return "".join(code for name, code in PRELUDES.items() if name in used) + source

def _needs_fashion_mnist(source):
    return "fashion_mnist" in source


@pytest.mark.slow
@pytest.mark.parametrize("source", [s for _, s in EXAMPLES], ids=IDS)
def test_example_runs(source, tmp_path):
    if _needs_fashion_mnist(source):
        from tf_dlthesis import data
        try:
            data.load_arrays("fashion_mnist", "test")
        except (ValueError, data.DatasetNotFoundError) as err:  # (a FileNotFoundError, not a ValueError)
            pytest.skip(f"Fashion-MNIST files absent: {err}")
    path = tmp_path / "example.py"
    path.write_text(_script(source))
    env = dict(os.environ, MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]


def _requirement_floors():
    """`(setup.cfg's floors, README's floors)` for Python, TensorFlow and Keras."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    declared = {"Python": cfg["options"]["python_requires"].strip().removeprefix(">=")}
    for line in cfg["options"]["install_requires"].split():
        name, _, floor = line.partition(">=")
        if name in ("tensorflow", "keras"):
            declared["TensorFlow" if name == "tensorflow" else "Keras"] = floor
    line = re.search(r"^Requirements: (.*)$", README.read_text(), re.M).group(1)
    stated = dict(re.findall(r"(Python|TensorFlow|Keras) >= ([0-9.]+)", line))
    return declared, stated


def test_readme_requirements_name_the_floors_setup_cfg_declares():
    # (README said Python >= 3.10 with setup.cfg until Keras 3.14, the Keras floor, turned out to need 3.11)
    declared, stated = _requirement_floors()
    assert stated == declared
    assert sys.version_info[:2] >= tuple(map(int, declared["Python"].split(".")))
