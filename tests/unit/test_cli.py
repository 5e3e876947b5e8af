"""The ``recdistill`` command, the README and docs/ against the code: every command they
name exists and takes each flag written after it, every ``--flag`` they mention is some
command's, every repository file they name is there and every relative link resolves."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
from pathlib import Path

import pytest

import recdistill
from recdistill.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
# The pages checked: the README and every page of docs/.
DOCS = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
# `recdistill distill --passes 2`, `python -m jobs.train_teacher --workers 2`: the command
# and what follows it on the same line, up to the end of the code span or a comment.
COMMAND = re.compile(r"(?:\brecdistill\s+|python -m jobs\.)([a-z][a-z_-]*)([^`\n#|]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z](?:[a-z0-9-]*[a-z0-9])?(?![\w-])")
FILE = re.compile(r"(?<![\w/.-])((?:jobs|cluster|teacher|student|data|tests|requirements|docs|\.ci|"
                  r"recdistill)/[\w./-]*\w)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MODULE_COMMAND = {module: name for name, (module, _) in COMMANDS.items()}
# Flags of other tools the pages show (ray start, pip, torchrun, tensorboard, grafana).
EXTERNAL_FLAGS = {"--head", "--node-ip-address", "--dashboard-host", "--num-cpus",
                  "--index-url", "--no-deps", "--all", "--standalone", "--logdir",
                  "--homepath", "--num-gpus", "--resources"}


# The data generators the pages run as ``python -m data.NAME``.
DATA_MODULES = ("data.shapes", "data.criteo")


@functools.cache
def _module_help(module: str) -> str:
    job = importlib.import_module(f"recdistill.{module}" if module.startswith("data.")
                                  else f"recdistill.jobs.{module}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        job.main(["--help"])
    assert e.value.code == 0
    return out.getvalue()


def _module(name: str) -> str | None:
    """The job module a page's ``recdistill NAME`` or ``python -m jobs.NAME`` runs: a
    command's, or a module of jobs/ that is not a command (``python -m jobs.docs``)."""
    if name in COMMANDS:
        return COMMANDS[name][0]
    if name in MODULE_COMMAND or (ROOT / "jobs" / f"{name}.py").is_file():
        return name
    return None


def _text(doc: str) -> str:
    # a shell command continued over lines (`\` at the end) is one command
    return re.sub(r"\\\n\s*", " ", (ROOT / doc).read_text(encoding="utf-8"))


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives ``page``'s headings (fenced code left out)."""
    out: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6} (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = 0
            while (f"{slug}-{n}" if n else slug) in out:
                n += 1
            out.add(f"{slug}-{n}" if n else slug)
    return out


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


def test_docs_commands_and_flags_exist() -> None:
    used: dict[str, set[str]] = {}
    unknown = set()
    for doc in DOCS:
        for m in COMMAND.finditer(_text(doc)):
            module = _module(m.group(1))
            if module is None:
                unknown.add(f"{doc}: {m.group(1)}")
                continue
            own, _, passed = m.group(2).partition(" -- ")  # submit passes the rest on
            used.setdefault(module, set()).update(FLAG.findall(own))
            if passed and module == "submit":
                used.setdefault("distill", set()).update(FLAG.findall(passed))
    assert not unknown, f"README/docs name commands that do not exist: {sorted(unknown)}"
    missing = {module: sorted(f for f in flags if f not in _module_help(module))
               for module, flags in used.items()}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"README/docs flags a command does not take: {missing}"
    assert {"distill", "train_teacher", "precompute", "predict", "bench", "docs"} <= set(used)


def test_docs_flags_exist(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])  # recdistill's own: --version
    known = set(EXTERNAL_FLAGS) | set(FLAG.findall(capsys.readouterr().out))
    for module in {*MODULE_COMMAND, "docs", *DATA_MODULES}:
        known.update(FLAG.findall(_module_help(module)))
    unknown = {doc: sorted(set(FLAG.findall(_text(doc))) - known) for doc in DOCS}
    unknown = {k: v for k, v in unknown.items() if v}
    assert not unknown, f"README/docs mention flags no command takes: {unknown}"


def test_docs_files_exist() -> None:
    names = set()
    for doc in (*DOCS, "BENCHMARKS.md"):
        names |= set(FILE.findall((ROOT / doc).read_text(encoding="utf-8")))
    absent = sorted(n for n in names if not (ROOT / n).exists())
    assert not absent, f"README/docs/BENCHMARKS name files that are not in the repository: {absent}"


def test_docs_links_resolve() -> None:
    broken = []
    for doc in (*DOCS, "BENCHMARKS.md"):
        for target in LINK.findall((ROOT / doc).read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            page = ((ROOT / doc).parent / path).resolve() if path else ROOT / doc
            if not page.exists() or ROOT not in page.parents:
                broken.append(f"{doc}: {target}")
            elif anchor and page.suffix == ".md" and anchor not in _anchors(page):
                broken.append(f"{doc}: {target} (no such heading)")
    assert not broken, f"links that lead nowhere: {broken}"


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
