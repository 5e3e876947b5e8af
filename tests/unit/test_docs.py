"""docs/configuration.md against the config dataclasses: the committed page is what
``python -m jobs.docs`` writes today, and every field of every dataclass the job's config
holds has its entry in its class's docstring."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import typing
from dataclasses import dataclass

import pytest

from recdistill.cluster.config import DistillConfig, RunOptions
from recdistill.jobs import docs


def _reachable(cls: type, seen: dict[str, type]) -> dict[str, type]:
    """``cls`` and every dataclass its fields hold, through tuples, dicts and optionals."""
    if cls.__name__ in seen:
        return seen
    seen[cls.__name__] = cls
    stack = list(typing.get_type_hints(cls).values())
    while stack:
        hint = stack.pop()
        stack += typing.get_args(hint)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            _reachable(hint, seen)
    return seen


CLASSES = _reachable(DistillConfig, {"RunOptions": RunOptions})


def test_the_walk_finds_every_table() -> None:
    assert {"DistillConfig", "TeacherGroupConfig", "StreamConfig", "GroupConfig",
            "StudentConfig", "LossTerm", "MemberConfig", "SweepConfig", "TeacherConfig",
            "RunOptions"} <= set(CLASSES)


def test_configuration_page_is_current() -> None:
    committed = docs.OUT.read_text(encoding="utf-8")
    assert committed == docs.render(), (
        "docs/configuration.md is stale (a config docstring, field or default changed): "
        f"regenerate it with `{docs.COMMAND}` and commit the result")


def test_every_field_has_a_docstring_entry() -> None:
    undocumented = {name: sorted({f.name for f in dataclasses.fields(cls)}
                                 - set(docs.attributes(cls)))
                    for name, cls in CLASSES.items()}
    undocumented = {k: v for k, v in undocumented.items() if v}
    assert not undocumented, ("fields without an entry under 'Attributes:' in their class's "
                              f"docstring (docs/configuration.md is built from them): "
                              f"{undocumented}")
    stale = {name: sorted(set(docs.attributes(cls))
                          - {f.name for f in dataclasses.fields(cls)})
             for name, cls in CLASSES.items()}
    stale = {k: v for k, v in stale.items() if v}
    assert not stale, f"docstring entries for fields that do not exist: {stale}"


def test_every_table_is_on_the_page() -> None:
    page = docs.render()
    absent = sorted(name for name in CLASSES if f"`{name}` (`" not in page)
    assert not absent, f"docs/configuration.md leaves out {absent} (add them to jobs/docs.py)"


def test_run_options_name_real_flags() -> None:
    from recdistill.jobs.distill import main
    assert set(docs.RUN_FLAGS) == {f.name for f in dataclasses.fields(RunOptions)}, (
        "jobs/docs.py RUN_FLAGS must name the option of every RunOptions field")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    text = out.getvalue()
    missing = sorted(flag for flag in docs.RUN_FLAGS.values() if flag not in text)
    assert not missing, f"`recdistill distill` has no {missing}"


def test_attribute_parsing() -> None:
    @dataclass
    class Example:
        """Something.

        Attributes:
            first: one line.
            second: ``code`` and :attr:`Other.x`, over
                two lines.

        Note: not an attribute.
        """

        first: int = 1
        second: tuple[tuple[int, ...], ...] = ((1, 2),)

    assert docs.attributes(Example) == {"first": "one line.",
                                        "second": "`code` and `Other.x`, over two lines."}
    assert docs.type_name(typing.get_type_hints(Example)["second"]) == \
        "array of arrays of integer"
    assert docs.toml(Example.second) == "[[1, 2]]"
    assert docs.table(Example)[2] == "| `first` | integer | `1` | one line. |"
