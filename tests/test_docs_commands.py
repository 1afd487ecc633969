"""Every command line in the documentation composes: a renamed option breaks the suite, not a reader.

Collected from README.md and docs/*.md, in fenced code blocks and in inline code: every command that runs
``train.py`` or ``evaluate.py`` through ``python`` (or ``python3``) or ``torchrun``, also after an
environment assignment, a ``$`` prompt, ``/usr/bin/time -v`` or ``&&``. Each is composed with Hydra's
compose API (``conf/config.yaml`` or ``conf/eval.yaml``, the Hydra config included so that ``hydra/...``
and ``hydra.*`` overrides are checked too); nothing is run.

How the lines are read:
- ``# ...`` comments are dropped; lines ending in ``\\`` are joined with the next.
- torchrun's own options (before ``train.py``) and Hydra's flags (``-m``, ``--multirun``, ``--cfg job``)
  are not overrides and are left out.
- ``[key=value]`` marks an optional override: it is composed without its brackets.
- Placeholders in angle brackets: a value or part of one (``resume=<run dir or last.pt>``,
  ``checkpoint=outputs/<date>/<time>/checkpoints/best.pt``) is composed with the string ``PLACEHOLDER`` (paths are not checked: nothing is loaded); a group choice
  (``clusterer=<name>``) or a whole token (``<--set overrides>``) stands for something the reader names,
  so the override is left out. ``...`` inside a path is kept as it is.
- A multirun's comma lists (``seed=0,1,2``, ``memory=multi_queue,centroid``) are composed once per value,
  the lists walked in step.
- ``HYPOTHETICAL`` lists the group choices that a page asks the reader to create first (extending.md's
  ``conf/memory/my_memory.yaml``); they are left out of the composition.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

HYPOTHETICAL = {"memory=my_memory"}

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
ENTRY = re.compile(r"(?:^|\s)(?:python3?|torchrun)\s")
ANGLE = re.compile(r"<[^<>]*>")
PLACEHOLDER = "PLACEHOLDER"
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp"}
GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()} | {"hydra/launcher"}


def _command_texts(text: str):
    """(line number, text) of every fenced code line and every inline code span that may hold a command."""
    for block in FENCE.finditer(text):
        start = text.count("\n", 0, block.start(2)) + 1
        lines = block.group(2).split("\n")
        joined, first = "", None
        for offset, line in enumerate(lines):
            if first is None:
                first = start + offset
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            yield first, joined + line
            joined, first = "", None
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in INLINE.finditer(prose):
        yield prose.count("\n", 0, span.start()) + 1, span.group(1)


def _segments(command: str) -> list[list[str]]:
    """The shell words of each command of a line (split at ``&&``, ``||``, ``;`` and ``|``), comments
    dropped; placeholders in angle brackets protected from the shell's splitting first."""
    protected = ANGLE.sub(lambda m: "<" + m.group(0)[1:-1].replace(" ", "\x00") + ">", command)
    try:
        words = shlex.split(protected, comments=True)
    except ValueError:  # an unbalanced quote: not a shell line
        return []
    segments, current = [], []
    for word in words:
        if word in ("&&", "||", ";", "|"):
            segments.append(current)
            current = []
        else:
            current.append(word.replace("\x00", " "))
    return [*segments, current]


def parse(command: str) -> list[tuple[str, list[str]]]:
    """``[(config name, overrides)]`` for every train.py / evaluate.py run in a command line."""
    runs = []
    for words in _segments(command):
        entry = next((i for i, w in enumerate(words) if w in ("train.py", "evaluate.py")), None)
        if entry is None or not any(w in ("python", "python3", "torchrun") for w in words[:entry]):
            continue
        overrides, skip = [], False
        for word in words[entry + 1:]:
            if skip:
                skip = False
                continue
            if word in FLAGS_WITH_VALUE:
                skip = True
                continue
            if word.startswith("[") and word.endswith("]"):
                word = word[1:-1]
            if word.startswith("-") or word.startswith("<") or word in HYPOTHETICAL:
                continue  # a Hydra flag, or a token the reader replaces as a whole
            key, sep, value = word.partition("=")
            if not sep:
                continue
            if ANGLE.fullmatch(value):
                if key.lstrip("+~") in GROUPS:
                    continue  # a group option the reader names
                value = PLACEHOLDER
            value = ANGLE.sub(PLACEHOLDER, value)  # outputs/<date>/<time>/checkpoints/best.pt
            overrides.append(f"{key}={value}")
        runs.append(("eval" if words[entry] == "evaluate.py" else "config", overrides))
    return runs


def expand(overrides: list[str]) -> list[list[str]]:
    """One list of overrides per value of the comma lists (a multirun's sweep), walked in step."""
    choices = []
    for override in overrides:
        key, _, value = override.partition("=")
        values = value.split(",") if "," in value and not value.startswith(("[", "{", "'", '"')) else [value]
        choices.append([f"{key}={v}" for v in values])
    width = max((len(c) for c in choices), default=1)
    return [[c[i % len(c)] for c in choices] for i in range(width)]


def collect() -> list[tuple[str, int, str, str, list[str]]]:
    found = []
    for page in PAGES:
        for line, text in _command_texts(page.read_text(encoding="utf-8")):
            if not ENTRY.search(" " + text):
                continue
            for name, overrides in parse(text):
                found.append((page.relative_to(ROOT).as_posix(), line, text.strip(), name, overrides))
    return found


COMMANDS = collect()


@pytest.fixture(scope="module")
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_the_collector_reads_the_lines_a_reader_would_run():
    assert parse("WANDB_MODE=offline python train.py logger=wandb  # offline") == [("config", ["logger=wandb"])]
    assert parse("pip install -e . && python train.py") == [("config", [])]
    assert parse("torchrun --standalone --nproc_per_node=8 train.py experiment=msmt17_infomap") == [
        ("config", ["experiment=msmt17_infomap"])]
    assert parse("python evaluate.py checkpoint=<best.pt, last.pt or a run directory> [eval.rerank=true]") == [
        ("eval", [f"checkpoint={PLACEHOLDER}", "eval.rerank=true"])]
    assert parse("python train.py -m sweep=<name> hydra.sweep.dir=<dir> <--set overrides>") == [
        ("config", [f"hydra.sweep.dir={PLACEHOLDER}"])]
    assert parse("python bench/bench_train.py --repeat 2 backbone.pretrained=false") == []
    assert expand(["seed=0,1,2", "memory=multi_queue,centroid", "train.epochs=8"]) == [
        ["seed=0", "memory=multi_queue", "train.epochs=8"], ["seed=1", "memory=centroid", "train.epochs=8"],
        ["seed=2", "memory=multi_queue", "train.epochs=8"]]
    pages = {page for page, *_ in COMMANDS}
    assert {"README.md", "docs/getting-started.md", "docs/reproducing.md"} <= pages
    assert len(COMMANDS) >= 60


@pytest.mark.parametrize("page,line,text,name,overrides", COMMANDS,
                         ids=[f"{page}:{line}" for page, line, *_ in COMMANDS])
def test_command_composes(hydra_conf, page, line, text, name, overrides):
    for variant in expand(overrides):
        error = _compose_error(name, tuple(variant))
        if error:
            pytest.fail(f"{page}:{line}: `{text}` does not compose ({' '.join(variant)}): {error}")


_COMPOSED: dict[tuple[str, tuple[str, ...]], str] = {}


def _compose_error(name: str, overrides: tuple[str, ...]) -> str:
    """The error of composing ``overrides``, or ''; each distinct command is composed once (many pages
    repeat the same lines)."""
    if (name, overrides) not in _COMPOSED:
        try:
            compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
            _COMPOSED[name, overrides] = ""
        except Exception as err:
            _COMPOSED[name, overrides] = str(err) or type(err).__name__
    return _COMPOSED[name, overrides]
