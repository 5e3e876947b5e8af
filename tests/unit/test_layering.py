"""The import direction (jobs -> cluster -> {student, teacher} -> common -> data; student
reads of teacher only the ``TeacherOutputs`` contract) read from the source, and one
module object per file in a checkout: ``data.spec`` is ``recdistill.data.spec``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package -> the top-level packages its modules must not import
FORBIDDEN = {
    "data": {"common", "teacher", "student", "cluster", "jobs"},
    "common": {"teacher", "student", "cluster", "jobs"},
    "teacher": {"student", "cluster", "jobs"},
    "student": {"teacher", "cluster", "jobs"},
}
# exceptions to FORBIDDEN: the contract student/ may read of teacher/
ALLOWED = {"student": {"teacher.outputs"}}


def _imported(tree: ast.AST, package: str) -> list[tuple[int, str, bool]]:
    """(line, module, whether it is the package of a ``from`` import) of every import in
    ``tree``, module names without ``recdistill.``: ``import``, ``from ... import``
    (each imported name too, as it may be a module; relative ones resolved against
    ``package``, the dotted package of the file) and ``importlib.import_module`` or
    ``__import__`` of a string literal."""
    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[:len(parts) - node.level + 1], *([base] if base else [])])
            found.append((node.lineno, base, True))
            found += [(node.lineno, f"{base}.{a.name}".lstrip("."), False) for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))):
            found.append((node.lineno, node.args[0].value, False))
    return [(line, name.removeprefix("recdistill."), base) for line, name, base in found]


def violations(rule: str, source: str, where: str = "<source>",
               package: str | None = None) -> list[str]:
    """The imports of one module under top-level package ``rule`` that break the
    direction, as ``where:line imports module``, the shortest name per import.

    Args:
        rule: the top-level package whose rules apply (a key of FORBIDDEN).
        source: the module's source.
        where: the module's path, for the messages.
        package: the module's dotted package (relative imports); default ``rule``.
    """
    allowed = ALLOWED.get(rule, set())
    flagged: dict[int, list[str]] = {}
    for line, name, is_base in _imported(ast.parse(source), package or rule):
        parts = name.split(".")
        if parts[0] not in FORBIDDEN[rule] or ".".join(parts[:2]) in allowed:
            continue
        # ``from recdistill.teacher import outputs``: the names imported decide, not
        # the bare package they come from
        if is_base and len(parts) == 1:
            continue
        flagged.setdefault(line, []).append(name)
    return [f"{where}:{line} imports {name}" for line, names in sorted(flagged.items())
            for name in names if not any(name.startswith(f"{n}.") for n in names)]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found under {ROOT / package}"
    bad = [v for f in files
           for v in violations(package, f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)),
                               ".".join(f.relative_to(ROOT).parts[:-1]))]
    assert bad == []


@pytest.mark.parametrize("package,source,expected", [
    ("student", "from recdistill.teacher.sharding import TeacherSharder\n",
     ["<source>:1 imports teacher.sharding"]),
    ("student", "import recdistill.teacher.registry as r\n",
     ["<source>:1 imports teacher.registry"]),
    ("student", "from recdistill import teacher\n", ["<source>:1 imports teacher"]),
    ("student", "from ..teacher import checkpoint\n",
     ["<source>:1 imports teacher.checkpoint"]),
    ("student", "import importlib\nimportlib.import_module('recdistill.teacher.model')\n",
     ["<source>:2 imports teacher.model"]),
    ("student", "from recdistill.teacher.outputs import TeacherOutputs\n"
                "from recdistill.teacher import outputs\nimport recdistill.teacher.outputs\n", []),
    ("student", "from recdistill.common.registry import STUDENTS\n", []),
    ("student", "import recdistill.teacher\n", ["<source>:1 imports teacher"]),
    ("student", "from recdistill.teacher import outputs, sharding\n",
     ["<source>:1 imports teacher.sharding"]),
    ("student", "from . import losses\nfrom .model import StudentModel\n", []),
    ("teacher", "from recdistill.student.model import StudentModel\n",
     ["<source>:1 imports student.model"]),
    ("teacher", "from recdistill.teacher.outputs import TeacherOutputs\n"
                "from recdistill.common.sharding import TableSharder\n", []),
    ("common", "if TYPE_CHECKING:\n    from recdistill.teacher.config import TeacherConfig\n",
     ["<source>:2 imports teacher.config"]),
    ("data", "import cluster.ledger\n", ["<source>:1 imports cluster.ledger"]),
    ("data", "from recdistill.common import registry\n",
     ["<source>:1 imports common.registry"]),
])
def test_a_planted_import_is_caught(package: str, source: str, expected: list[str]) -> None:
    # the check above passing means something only if these plants fail it
    assert violations(package, source) == expected


def _python(code: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter run from ``cwd`` (the checkout: its bare names
    importable, as for ``python -m jobs.distill``)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_bare_and_recdistill_names_are_one_module() -> None:
    r = _python("""
        import data.spec, recdistill.data.spec
        assert data.spec is recdistill.data.spec
        import recdistill.teacher.registry, teacher.registry
        assert teacher.registry is recdistill.teacher.registry
        import teacher, recdistill.teacher, common, recdistill.common
        assert teacher is recdistill.teacher and common is recdistill.common
        from student import model
        import recdistill.student.model
        assert model is recdistill.student.model
        import sys
        # one entry per name, the same object; the spec stays the real module's
        assert sys.modules["data.spec"] is sys.modules["recdistill.data.spec"]
        assert data.spec.__spec__.name == "recdistill.data.spec"
        assert data.spec.FeatureSpec.__module__ == "recdistill.data.spec"
        print("one module")
    """)
    assert (r.returncode, r.stdout, r.stderr) == (0, "one module\n", "")


def test_a_registry_filled_through_one_name_is_seen_through_the_other() -> None:
    r = _python("""
        from teacher.registry import register_teacher, register_student
        from common.checkpoint import CheckpointError as Bare

        @register_teacher("bare_tower")
        def tower(spec, cfg, n_sparse): ...

        @register_student("bare_student")
        def student(spec, cfg, width): ...

        from recdistill.teacher.registry import TEACHERS
        from recdistill.common.registry import STUDENTS
        from recdistill.teacher.checkpoint import CheckpointError
        assert TEACHERS.builder("bare_tower") is tower
        assert STUDENTS.builder("bare_student") is student
        assert CheckpointError is Bare
        print("one registry")
    """)
    assert (r.returncode, r.stdout, r.stderr) == (0, "one registry\n", "")


def test_python_dash_m_still_runs_a_module_by_its_bare_name() -> None:
    # runpy asks the alias for the module's code; the Makefile and README rely on it
    r = subprocess.run([sys.executable, "-m", "jobs.bench", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ")


def test_a_bare_package_of_another_file_fails_naming_the_right_import(tmp_path: Path) -> None:
    # a copy of data/ ahead of the checkout on the path would be a second module
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text((ROOT / "data" / "__init__.py").read_text())
    r = _python("import data", cwd=tmp_path, PYTHONPATH=str(ROOT))
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"ImportError: 'data' ({tmp_path / 'data' / '__init__.py'}) is not the "
                    f"package recdistill.data resolves to ({ROOT / 'data' / '__init__.py'}); "
                    "import recdistill.data instead")
