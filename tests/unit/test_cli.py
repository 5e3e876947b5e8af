"""The ``recdistill`` command and the README against the code: every command the README
names exists and takes each flag written after it, and every repository file it names
is there."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

import recdistill
from recdistill.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
# `recdistill distill --passes 2`, `python -m jobs.train_teacher --workers 2`: the command
# and what follows it on the same line, up to the end of the code span or a comment.
COMMAND = re.compile(r"(?:\brecdistill\s+|python -m jobs\.)([a-z][a-z_-]*)([^`\n#|]*)")
FILE = re.compile(r"(?<![\w/.-])((?:jobs|cluster|teacher|student|data|tests|requirements|docs|\.ci|"
                  r"recdistill)/[\w./-]*\w)")
MODULE_COMMAND = {module: name for name, (module, _) in COMMANDS.items()}


def _help(command: str) -> str:
    module = importlib.import_module(f"recdistill.jobs.{COMMANDS[command][0]}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    return out.getvalue()


def test_version_and_command_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"recdistill {recdistill.__version__}\n"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    assert all(f"\n  {name} " in text for name in COMMANDS)
    with pytest.raises(SystemExit) as e:
        main(["distil"])
    assert e.value.code == 2 and "invalid choice: 'distil'" in capsys.readouterr().err


def test_subcommand_runs_its_job(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["report-table", "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: recdistill "
                                                                    "report-table")


def test_readme_commands_and_flags_exist() -> None:
    # a shell command continued over lines (`\` at the end) is one command
    text = re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text(encoding="utf-8"))
    used: dict[str, set[str]] = {}
    for m in COMMAND.finditer(text):
        name = MODULE_COMMAND.get(m.group(1), m.group(1))
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", m.group(2)))
        used.setdefault(name, set()).update(flags)
    unknown = sorted(set(used) - set(COMMANDS))
    assert not unknown, f"README names commands that do not exist: {unknown}"
    missing = {name: sorted(f for f in flags if f not in _help(name))
               for name, flags in used.items()}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"README flags a command does not take: {missing}"
    assert {"distill", "train-teacher", "precompute", "predict", "bench"} <= set(used)


def test_readme_files_exist() -> None:
    names = set()
    for doc in ("README.md", "BENCHMARKS.md"):
        names |= set(FILE.findall((ROOT / doc).read_text(encoding="utf-8")))
    absent = sorted(n for n in names if not (ROOT / n).exists())
    assert not absent, f"README/BENCHMARKS name files that are not in the repository: {absent}"


def test_submit_ships_the_checkout(tmp_path: Path) -> None:
    from recdistill.jobs.submit import runtime_env
    # from a checkout: the checkout is the job's working directory (.gitignore'd and
    # these excluded); another directory cannot stand in for it
    assert runtime_env(None) == {"excludes": [".venv", "runs", ".git"],
                                 "working_dir": str(ROOT)}
    with pytest.raises(SystemExit, match="from a checkout the job's working directory"):
        runtime_env(str(tmp_path))


def test_submit_ships_an_installed_package(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from recdistill.jobs.submit import runtime_env
    package = tmp_path / "site-packages" / "recdistill"
    (package / "cluster").mkdir(parents=True)
    monkeypatch.setattr(recdistill, "__file__", str(package / "__init__.py"))
    # an installed wheel (recdistill/ holds cluster/ ...) ships itself as a py_module,
    # and uploads a working directory only when asked to
    assert runtime_env(None) == {"excludes": [".venv", "runs", ".git"],
                                 "py_modules": [str(package)]}
    assert runtime_env(str(tmp_path))["working_dir"] == str(tmp_path)
