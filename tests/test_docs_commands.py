"""Every `vprkit ...` command that README.md and docs/*.md show in a code block parses with the real parser and
builds its configuration (unknown `--set` keys, wrong types and unknown presets fail here), and the quick start
runs on the demo data with a tiny backbone. A failure names the doc file and line: fix the doc or the code.

Placeholders are fine (`MAP`, `IDX`): paths are not opened while parsing. An `...` argument stands for "more
of the same" and is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from vprkit import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(?:\$ )?vprkit(?: |$)")


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the code in a markdown text: fenced blocks and blocks indented by 4 spaces after a
    blank line (list continuations are not code); continued lines (`\\`) joined onto their first."""
    out: list[tuple[int, str]] = []
    fenced, indented, previous_blank, pending = False, False, True, None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        indented = line.startswith("    ") and (indented or previous_blank)
        previous_blank = not line.strip()
        if not (fenced or indented):
            pending = None
            continue
        code = line.strip()
        if pending is not None:
            out[-1] = (pending, out[-1][1] + " " + code)
        else:
            out.append((number, code))
        pending = (pending or number) if code.endswith("\\") else None
        if pending is not None:
            out[-1] = (out[-1][0], out[-1][1][:-1].rstrip())
    return out


def inline_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of the inline code spans that are whole commands: `vprkit`, its subcommand words,
    then an argument (a path or PLACEHOLDER); synopses with `[optional]` or `a|b` parts are left out, and so are
    mentions of a command or an option (`vprkit index --preset auto`)."""
    out = []
    for match in re.finditer(r"`(vprkit [^`]+)`", text):
        words = match.group(1).split()
        first_arg = next((w for w in words[1:] if w not in SUBCOMMAND_WORDS), "-")
        if not first_arg.startswith("-") and first_arg not in ("...", "COMMAND") and not re.search(r"[\[|$]",
                                                                                                 match.group(1)):
            out.append((text.count("\n", 0, match.start()) + 1, " ".join(words)))
    return out


def subcommand_words(parser: argparse.ArgumentParser) -> set[str]:
    """Every (nested) subcommand name of the real parser, and the choices of their first positional (the
    `train netvlad` modes)."""
    words: set[str] = set()
    for action in parser._actions:  # argparse offers no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words |= {name} | subcommand_words(child)
        elif action.choices and not action.option_strings:
            words |= set(action.choices)
    return words


SUBCOMMAND_WORDS = subcommand_words(cli.parser())


def documented_commands() -> list[tuple[str, str]]:
    """(`FILE:LINE`, command) for every vprkit command in a code block (each part of an `a && b` separately) or
    in an inline code span that is a whole command."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for number, code in code_lines(text) + inline_commands(text):
            code = re.sub(r"\s+#.*$", "", code)
            for part in code.split("&&"):
                part = part.strip().removesuffix("&").strip()  # `vprkit serve IDX &`: started in the background
                if COMMAND.match(part):
                    found.append((f"{doc.relative_to(ROOT)}:{number}", part.removeprefix("$ ")))
    return found


COMMANDS = documented_commands()
PLUGIN_DOC = ROOT / "docs" / "architecture.md"  # its Python example registers the plug-ins its commands use


@pytest.fixture
def doc_plugins():
    """The Python blocks of docs/architecture.md run (they register a backbone, an aggregator and a re-ranker);
    the registries are restored afterwards."""
    from vprkit import aggregators, models, rerank

    registries = [models.REGISTRY, aggregators.REGISTRY, rerank.REGISTRY]
    saved = [dict(r) for r in registries]
    blocks = re.findall(r"```python\n(.*?)```", PLUGIN_DOC.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, f"{PLUGIN_DOC.name}: the plug-in example is gone"
    namespace = {"__name__": "doc_plugins"}
    for block in blocks:
        exec(compile(block, str(PLUGIN_DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    yield namespace
    for registry, entries in zip(registries, saved):
        registry.clear()
        registry.update(entries)


def test_the_docs_show_commands():
    """The extraction finds the quick start and the method pages (a broken extractor must not pass silently)."""
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert {"README.md", "docs/sequence.md", "docs/training.md", "docs/segvlad.md"} <= where
    assert len(COMMANDS) > 40


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses_and_builds_its_config(where, command, doc_plugins):
    argv = [a for a in shlex.split(command)[1:] if a != "..."]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = cli.parser().parse_args(cli.modern_argv(argv))
    except SystemExit:
        pytest.fail(f"{where}: `{command}` does not parse: {err.getvalue().strip().splitlines()[-1]}")
    if hasattr(args, "conf"):
        try:
            args.conf(args)
        except (ValueError, KeyError) as exc:
            pytest.fail(f"{where}: `{command}` has a bad configuration: {exc}")


def _run(where: str, command: str) -> None:
    """Run a documented command (demo data paths made absolute) and fail naming where the docs show it."""
    argv = [str(ROOT / a) if a.startswith("vprkit/demo_data") else a for a in shlex.split(command)[1:]]
    assert cli.main(argv) == 0, f"{where}: `{command}` failed"


def test_the_quick_start_runs(tiny_backbone, tmp_path, monkeypatch, capsys):
    """README's tour on the demo data (a tiny backbone stands in for DINOv2): index, query, sequence; its
    re-ranking and serving steps have their own tests (test_patchnetvlad, test_service)."""
    monkeypatch.chdir(tmp_path)
    tour = [(f"README.md:{n}", c) for n, c in code_lines((ROOT / "README.md").read_text(encoding="utf-8"))
            if COMMAND.match(c) and c.split()[1] in ("index", "query", "sequence")]
    assert [c.split()[1] for _, c in tour] == ["index", "query", "sequence"]
    for where, command in tour:
        _run(where, command)
    assert "seqslam" in capsys.readouterr().out  # the sequence step printed its metrics beside single-image ones
    assert (tmp_path / "idx" / "results" / "query" / "sequence-seqslam" / "sequence.txt").is_file()


def test_index_preset_auto_runs(tiny_backbone, image_folder, tmp_path):
    """docs/defaults.md: `vprkit index MAP -o IDX --preset auto` (it failed before 'auto' was resolved): the 24x32
    test images are thumbnails (short side <= 48 px), so 'auto' takes `pixels`."""
    import json

    assert cli.main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "auto"]) == 0
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["conf"]["preset"] == "pixels"


def test_the_documented_plugins_index_query_and_rerank(doc_plugins, image_folder, tmp_path):
    """docs/architecture.md's backbone, aggregator and re-ranker, registered from outside vprkit, run through the
    real commands: each map image finds itself (max-pooled conv features of the image itself), and the
    re-ranker's order is the global one reversed."""
    idx, res = tmp_path / "idx", tmp_path / "res"
    assert cli.main(["index", str(image_folder), "-o", str(idx), "--preset", "mobilenetv2-gem", "--set",
                     "model.name=mynet", "model.width=32", "aggregator={\"name\": \"maxpool\"}"]) == 0
    assert cli.main(["query", str(idx), str(image_folder), "-o", str(res), "--top-k", "4"]) == 0
    from vprkit.results import load_retrieval

    glob = load_retrieval(res)
    assert [glob.m_names[i] for i in glob.ids[:, 0]] == glob.q_names
    assert cli.main(["rerank", str(res), "--method", "reverse", "--preset", "all", "-o", str(tmp_path / "rr")]) == 0
    got = load_retrieval(tmp_path / "rr")
    assert (got.ids == glob.ids[:, ::-1]).all()


def test_a_setting_the_implementation_does_not_take_is_one_line(doc_plugins, image_folder, tmp_path, capsys):
    """Naming another backbone drops the preset's backbone keywords (DINOv2's layer and facet); a keyword the new
    one does not take is refused before any work, naming the ones it takes."""
    conf = cli.parser().parse_args(["index", "M", "-o", "O", "--preset", "dinov2-gem", "--set", "model.name=mynet"])
    assert conf.conf(conf)["model"] == {"name": "mynet"}
    assert cli.main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "dinov2-gem", "--set",
                     "model.name=mynet", "model.layer=7"]) == 2
    assert "backbone 'mynet': got an unexpected keyword argument 'layer'; its settings: ['width']" in \
        capsys.readouterr().err
    assert not (tmp_path / "idx").exists()
