"""Write docs/configuration.md from the config dataclasses' docstrings.

    python -m jobs.docs            # rewrite docs/configuration.md
    python -m jobs.docs --check    # exit 1 if the committed page is stale

Every key of the distill job's TOML file is a field of a frozen dataclass whose docstring
describes it under ``Attributes:``; the page lists, per TOML table, each key with its
type, its default and that text, and the job's command-line options (``RunOptions``).
Edit the docstrings, then regenerate: ``tests/unit/test_docs.py`` fails on a stale page
and on a field its class's docstring does not describe.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "configuration.md"
COMMAND = "python -m jobs.docs"
# RunOptions field -> the `recdistill distill` option that sets it
RUN_FLAGS = {"soft_labels": "--soft-labels", "state_dir": "--state-dir",
             "checkpoint_every": "--checkpoint-every", "resume": "--resume",
             "progress": "--no-progress", "address": "--address",
             "join_timeout_s": "--join-timeout", "report": "--report", "plot": "--plot",
             "artifacts": "--students-dir", "verbose": "--verbose",
             "tensorboard": "--tensorboard", "storage": "--storage"}
_ROLE = re.compile(r":(?:attr|class|func|meth|mod):`~?([^`]+)`")
_SCALARS = {int: "integer", float: "float", bool: "boolean", str: "string", Any: "any"}


def attributes(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``cls``'s docstring: field name -> its text, lines
    joined, reStructuredText roles and double backticks turned into Markdown code."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    out: dict[str, str] = {}
    if "Attributes:" not in lines:
        return out
    body = lines[lines.index("Attributes:") + 1:]
    indent = None
    name = None
    for line in body:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        m = re.match(r"(\w+): ?(.*)", line.strip())
        if depth == indent and m:
            name = m.group(1)
            out[name] = m.group(2)
        elif name is not None:
            out[name] += " " + line.strip()
    return {k: _markdown(v) for k, v in out.items()}


def _markdown(text: str) -> str:
    return _ROLE.sub(r"`\1`", text).replace("``", "`").strip()


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(hint: Any) -> str:
    """A field's type as the TOML file writes it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        others = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in others) + " (optional)"
    if origin is tuple:
        inner = type_name(args[0]) if args else "any"
        return "array of " + re.sub(r"^(array|table)\b", r"\1s", inner)
    if origin is dict:
        value = args[1] if len(args) == 2 else Any
        return "table" if value is Any else f"table of {type_name(value)}"
    if dataclasses.is_dataclass(hint):
        return "table"
    return getattr(hint, "__name__", str(hint))


def toml(value: Any) -> str:
    """``value`` as TOML (``not set`` for None)."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }" \
            if value else "{}"
    if dataclasses.is_dataclass(value):
        return toml({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return repr(value)


def default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(cls: type, defaults: dict[str, str] | None = None,
          merged: dict[str, tuple[str, str, str]] | None = None) -> list[str]:
    """One Markdown table of ``cls``'s fields: key, type, default, description.
    ``defaults`` words a field's default; ``merged`` names a dataclass field whose keys
    the file writes in this same table: field -> (key, type, default) of its row."""
    doc, types = attributes(cls), hints(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        d = default(f)
        key, kind = f"`{f.name}`", type_name(types[f.name])
        shown = (defaults or {}).get(f.name) or (
            "required" if d is dataclasses.MISSING else f"`{toml(d)}`")
        if f.name in (merged or {}):
            key, kind, shown = merged[f.name]  # type: ignore[index]
        rows.append(f"| {key} | {kind} | {_cell(shown)} | "
                    f"{_cell(doc.get(f.name, '(undocumented)'))} |")
    return rows


def _source(cls: type) -> str:
    module = cls.__module__.removeprefix("recdistill.").replace(".", "/")
    return f"`{cls.__name__}` (`{module}.py`)"


def render() -> str:
    """The whole page."""
    from recdistill.cluster.config import (DistillConfig, GroupConfig, MemberConfig,
                                           RunOptions, StreamConfig, SweepConfig,
                                           TeacherGroupConfig, default_groups,
                                           default_teachers)
    from recdistill.student.config import LossTerm, StudentConfig
    from recdistill.teacher.config import TeacherConfig

    top = attributes(DistillConfig)
    groups = ", ".join(f"`{g.name}`" for g in default_groups())
    committee = ", ".join(f"`{m.name}`" for m in default_teachers(TeacherConfig()))
    out = [
        "# Configuration", "",
        f"<!-- Generated by `{COMMAND}` from the config dataclasses' docstrings: edit "
        "those, then regenerate. -->", "",
        "The distill job's TOML file (`recdistill distill --config FILE`; "
        "`jobs/configs/distill_movielens.toml` spells out the defaults), table by table. "
        "Each key is a field of a frozen dataclass, and the text below is that field's "
        "entry in the class's docstring. An unknown key or a bad value fails before any "
        "actor starts, naming the file and the key. Command-line options override the "
        "file: `recdistill distill --help`.", "",
        "## Top-level keys", "", f"{_source(DistillConfig)}.", "",
        *table(DistillConfig, defaults={
            "teacher": "the `[teacher]` defaults",
            "teacher_group": "the `[teacher_group]` defaults",
            "stream": "the `[stream]` defaults",
            "groups": f"the default groups: {groups}",
            "teachers": f"no `[[teachers]]` table: the default committee, {committee}; "
                        "`teachers = []`: the one teacher of `[teacher]`"}),
        "", "## `[teacher_group]`", "", f"{_source(TeacherGroupConfig)}: "
        f"{top['teacher_group']}", "", *table(TeacherGroupConfig),
        "", "## `[stream]`", "", f"{_source(StreamConfig)}: {top['stream']}", "",
        *table(StreamConfig),
        "", "## `[teacher]`", "", f"{_source(TeacherConfig)}: {top['teacher']}", "",
        *table(TeacherConfig),
        "", "## `[[teachers]]`", "", f"{_source(MemberConfig)}: {top['teachers']} "
        "Besides `name` and `checkpoint`, a member's table takes any `[teacher]` key: "
        "together they are its `teacher`.", "",
        *table(MemberConfig, merged={"teacher": (
            "any `[teacher]` key", "as in `[teacher]`", "the `[teacher]` table's value")}),
        "", "## `[[groups]]`", "", f"{_source(GroupConfig)}: {top['groups']} A group's "
        "table holds its own keys and its student's, one table: the student's keys are "
        "its `student`.", "",
        *table(GroupConfig, merged={"student": (
            "the student's keys", "below", "the `StudentConfig` defaults")}),
        "", f"The student's keys, {_source(StudentConfig)}:", "", *table(StudentConfig),
        "", "### `losses`", "", f"An array of inline tables, {_source(LossTerm)}: "
        "`losses = [{ name = \"hard_label\", weight = 0.2 }, { name = \"prediction_kd\", "
        "weight = 0.8, params = { temperature = 1.0 } }]`.", "", *table(LossTerm),
        "", "## `[sweep]`", "", f"{_source(SweepConfig)}: {top['sweep']}", "",
        *table(SweepConfig),
    ]
    doc, types = attributes(RunOptions), hints(RunOptions)
    out += ["", "## Command-line options of a run", "",
            f"{_source(RunOptions)}: how one run is driven, set on the command line, "
            "not in the file. The defaults are `RunOptions()`'s; the command line puts "
            "the run's files beside `--report` unless told otherwise (`recdistill "
            "distill --help` gives its defaults).", "",
            "| option | field | type | default | description |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(RunOptions):
        kind = "switch" if types[f.name] is bool else type_name(types[f.name])
        out.append(f"| `{RUN_FLAGS.get(f.name, '(none)')}` | `{f.name}` | {kind} | "
                   f"`{toml(default(f))}` | {_cell(doc.get(f.name, '(undocumented)'))} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(OUT), help="where to write the page "
                                                    "(default docs/configuration.md)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the page differs from the docstrings")
    a = p.parse_args(argv)
    text, out = render(), Path(a.out)
    if a.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
