"""dvc.yaml deps follow the code: each stage depends on every `pipeline/` file its script
imports (transitively, lazy imports inside functions included) and on no `pipeline/` file it
never imports, so a change to shared code reruns exactly the stages that run it.

Imports are read with `ast` (nothing is executed); importing `pipeline.a.b` also runs
`pipeline/__init__.py` and `pipeline/a/__init__.py`, so those count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"


def module_file(name: str) -> Path | None:
    """`pipeline.a.b` -> pipeline/a/b.py or pipeline/a/b/__init__.py (repo-relative); None
    for names outside the package or that are not modules (e.g. a function)."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    rel = Path(*name.split("."))
    for path in (rel.with_suffix(".py"), rel / "__init__.py"):
        if (REPO / path).is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """Every `pipeline...` module a file imports anywhere (top level, functions, TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse((REPO / path).read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from pipeline.metrics import featurenet` imports a submodule.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if module_file(n) is not None}


def pipeline_closure(script: Path) -> set[Path]:
    """The repo-relative `pipeline/` files that running `script` can import."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in imported_modules(todo.pop()):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # parents' __init__.py run first
                file = module_file(".".join(parts[:i]))
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return seen


def stages() -> dict[str, dict]:
    """Stage name -> its definition; a `foreach` group is its `do` template (every expansion
    shares its deps)."""
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


def stage_script(stage: dict) -> Path:
    scripts = [Path(w) for w in stage["cmd"].split() if w.startswith("stages/")]
    assert len(scripts) == 1, f"one stage script per cmd, got {scripts}"
    return scripts[0]


def dep_paths(stage: dict, key: str = "deps") -> list[Path]:
    """The paths a stage lists under `key` (deps, or outs), with or without options."""
    return [Path(next(iter(d)) if isinstance(d, dict) else d) for d in stage.get(key, [])]


def covered(file: Path, deps: list[Path]) -> bool:
    return any(file == dep or dep in file.parents for dep in deps)


def test_closure_sees_lazy_and_package_imports() -> None:
    # stages/detect.py imports pipeline.detect.run inside main(); run.py imports
    # pipeline.models inside a function; pipeline/detect/__init__.py runs on the way.
    files = pipeline_closure(Path("stages/detect.py"))
    for expected in ("pipeline/__init__.py", "pipeline/detect/__init__.py",
                     "pipeline/detect/run.py", "pipeline/models/checkpoint.py",
                     "pipeline/errors.py"):
        assert Path(expected) in files, expected
    assert Path("pipeline/train/launcher.py") not in files


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_depends_on_its_script_and_all_the_code_it_imports(name: str) -> None:
    stage = stages()[name]
    script, deps = stage_script(stage), dep_paths(stage)
    assert script in deps, f"{name}: {script} is not a dep"
    missing = sorted(str(f) for f in pipeline_closure(script) if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {name}: add deps {missing}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_depends_on_no_pipeline_code_it_never_imports(name: str) -> None:
    stage = stages()[name]
    used = pipeline_closure(stage_script(stage))
    unused = []
    for dep in dep_paths(stage):
        if dep.parts[0] != PACKAGE:
            continue
        files = sorted((REPO / dep).rglob("*.py")) if (REPO / dep).is_dir() else [REPO / dep]
        unused += [str(f.relative_to(REPO)) for f in files if f.relative_to(REPO) not in used]
    assert not unused, f"dvc.yaml stage {name}: depends on code it never imports: {unused}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_depends_on_the_mlflow_runs_it_logs_into(name: str) -> None:
    # A retrain that computes the same weights still opens a new MLflow run (its run.json
    # changes): every stage that logs into a model's run, or links it, must then run again,
    # or the new run misses its metrics.
    stage = stages()[name]
    words = stage["cmd"].split()
    runs = [Path(words[i + 1]) for i, w in enumerate(words[:-1]) if w == "--run"]
    runs += [Path(words[i + 1]) / "run.json" for i, w in enumerate(words[:-1])
             if w == "--models"]
    deps, outs = dep_paths(stage), dep_paths(stage, "outs")  # train writes its run.json
    missing = [str(r) for r in runs if not covered(r, deps) and not covered(r, outs)]
    assert not missing, f"dvc.yaml stage {name}: add deps {missing}"
