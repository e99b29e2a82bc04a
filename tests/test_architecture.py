"""The code's shape: three layers importing one way, no import cycles, and a public API that matches
the README. Imports are read from the source (in-function ones included), nothing is executed."""

import ast
import graphlib
import importlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
# library ← pipelines ← application: a module may import its own layer and the ones before it
APPLICATION = {
    "mcof_tf.loop",
    "mcof_tf.report",
    "mcof_tf.train",
    "mcof_tf.bench",
    "mcof_tf.predict",
    "mcof_tf.export_masks",
}


def layer(module: str) -> int:
    if module in APPLICATION:
        return 2
    return 1 if module.split(".")[0] == "beam_jobs" else 0


def project_modules() -> dict:
    out = {}
    for pkg in ("mcof_tf", "beam_jobs"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports_of(name: str, path: pathlib.Path, known: dict) -> set:
    """Project modules that `name` imports anywhere in its source (a package import counts for the
    package's __init__)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from pkg import name`: the module or its package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
                break
    return found


def test_layers_import_one_way_and_there_is_no_cycle():
    known = project_modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    upward = [f"{a} → {b}" for a, deps in graph.items() for b in deps if layer(b) > layer(a)]
    assert not upward, "imports against the layering: " + ", ".join(sorted(upward))
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_the_layer_check_sees_in_function_imports(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from mcof_tf import loop\n    import beam_jobs.common\n")
    known = {"mcof_tf.loop": None, "beam_jobs.common": None, "x.m": mod}
    assert imports_of("x.m", mod, known) == {"mcof_tf.loop", "beam_jobs.common"}


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_name_the_readme_uses_imports():
    readme = (ROOT / "README.md").read_text()
    code = " ".join(re.findall(r"`([^`\n]+)`", readme)) + " ".join(re.findall(r"```.*?```", readme, re.S))
    dotted = set(re.findall(r"\b((?:mcof_tf|beam_jobs)(?:\.[A-Za-z_]\w*)+)", code))
    assert "mcof_tf.models.deeplab_largefov" in dotted
    for name in sorted(dotted):
        assert _resolve(name) is not None, name
    # the models' builders and layers that the prose names bare import from the package
    import mcof_tf.models as models

    defined = set()
    for path in (ROOT / "mcof_tf" / "models").glob("*.py"):
        defined |= {
            n.name
            for n in ast.parse(path.read_text()).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
        }
    named = {w for w in re.findall(r"`(\w+)(?:\([^`]*\))?`", readme) if w in defined}
    assert named >= {"build_cam", "build_regionnet", "MaskedRoIPooling"}
    assert all(hasattr(models, w) for w in named), sorted(w for w in named if not hasattr(models, w))


# user paths go through mcof_tf.fileio (tf.io.gfile: local disk and gs:// alike); these calls would
# silently work on local disk only (and tf.io.gfile directly bypasses the one I/O layer)
LOCAL_ONLY = {
    "open",
    "os.path.exists",
    "os.path.isdir",
    "os.path.isfile",
    "os.path.getsize",
    "os.makedirs",
    "os.listdir",
    "os.replace",
    "os.rename",
    "os.remove",
    "os.walk",
    "glob.glob",
    "savefig",
}
LOCAL_BY_NATURE = {  # whole modules, and why
    "mcof_tf/fileio.py": "the I/O layer itself (and the local-only .lock of folder_lock)",
    "mcof_tf/data/synthetic.py": "generates the embedded benchmark on local disk (a temporary folder renamed "
    "into place)",
}


def local_file_calls(source: str) -> list:
    """(line, call) of every LOCAL_ONLY call whose line does not say `fileio-exempt: <why>`."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        short = name.rpartition(".")[2]
        direct = name in LOCAL_ONLY or name.startswith("shutil.") or short == "savefig" or ".gfile." in name
        if direct and ("fileio-exempt:" not in lines[node.lineno - 1]):
            found.append((node.lineno, name))
    return sorted(found)


def test_user_paths_go_through_fileio():
    offenders = []
    for _, path in sorted(project_modules().items()):
        rel = str(path.relative_to(ROOT))
        if rel not in LOCAL_BY_NATURE:
            offenders += [f"{rel}:{line} {call}" for line, call in local_file_calls(path.read_text())]
    assert offenders == [], "use mcof_tf.fileio (gs:// works there) or say why with `# fileio-exempt: ...`"


def test_the_fileio_check_sees_local_calls():
    src = (
        "import os, shutil\n"
        "with open(p) as f: pass\n"
        "os.path.exists(p)\n"
        "shutil.rmtree(p)\n"
        "fig.savefig(p)\n"
        "tf.io.gfile.GFile(p)\n"
        "open(q)  # fileio-exempt: a subprocess's log\n"
        "fileio.exists(p)\n"
    )
    assert local_file_calls(src) == [
        (2, "open"),
        (3, "os.path.exists"),
        (4, "shutil.rmtree"),
        (5, "fig.savefig"),
        (6, "tf.io.gfile.GFile"),
    ]


def test_the_dataflow_container_matches_setup_py():
    """The Dockerfile cannot be built here (no registry): it must at least name the Python, Beam and
    TensorFlow versions that setup.py pins, or Dataflow's workers would run other code than the launcher."""
    docker = (ROOT / "Dockerfile").read_text()
    setup = (ROOT / "setup.py").read_text()
    image = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:(\d+\.\d+)\.\d+$", docker, re.M)
    assert image, "FROM apache/beam_pythonX.Y_sdk:A.B.C"
    assert f'python_requires=">={image[1]}"' in setup
    assert f'"apache-beam[tfrecord]>={image[2]},' in setup
    tf_pin = re.search(r'"tensorflow>=(\d+\.\d+),<', setup)[1]
    assert f'"tensorflow=={tf_pin}.*"' in docker and "/mcof[gcp]" in docker
