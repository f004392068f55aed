"""A work folder started from another one's finished stages (``run.py --from SOURCE``).

Why: the ablation's axes (the span ratio, the interleaved share, the arms' steps) sit at the end of
a chain whose shared stages take two hours on 2 cores. A change of settings reaches only the stages
that read a changed key and the stages after those; the others are the source's, so they are taken
over rather than made again, and the new folder is a job of its own settings (``job.json``) like any
other.

How: each stage names the settings and the earlier stages it reads (``Recipe.reads``) and the files
it writes (``Recipe.outputs``). A source stage is kept when it finished, reads no changed key and
reads only kept stages. Its files are hard links (no space, no time: the speech corpus alone is
thousands of files); its marker is copied last, so an interrupted fork never leaves a stage marked
done without its files, and ``forked_from.json`` says whether the fork finished (a rerun finishes it).
A tool that writes into a file in place (an appended metrics file) would write through a link into
the source, so before a stage runs in a forked folder its linked files become private copies
(``unshare``); kept stages are never run again unless their marker is deleted.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from megatron_speech import atomic, config_loader, jobs

RECORD = "forked_from.json"


def touches(key: str, prefix: str) -> bool:
    """Whether a changed dotted ``key`` is (in) the setting ``prefix`` or holds it (a whole section)."""
    return key == prefix or key.startswith(prefix + ".") or prefix.startswith(key + ".")


def differing(recipe, source_settings: dict, ignored: Iterable[str] = ()) -> list[str]:
    """The dotted keys where ``recipe``'s settings differ from a source folder's, ``ignored`` left out."""
    skip = set(ignored)
    return [k for k in config_loader.differing_keys(source_settings, recipe.settings()) if k not in skip]


def kept_stages(recipe, source_settings: dict, finished: set[str], ignored: Iterable[str] = ()) -> list[str]:
    """The stages, in order, that ``recipe`` may take over from a source folder made with
    ``source_settings`` whose ``finished`` stages those are. A changed key that no stage claims
    (the preset's name, a key added later) keeps nothing: unknown reach, no reuse."""
    changed = differing(recipe, source_settings, ignored)
    names = [name for name, _ in recipe.stages()]
    claimed = {prefix for name in names for prefix in recipe.reads(name)[0]}
    if any(not any(touches(key, prefix) for prefix in claimed) for key in changed):
        return []
    kept: list[str] = []
    for name in names:
        settings, upstream = recipe.reads(name)
        if (name in finished and all(u in kept for u in upstream)
                and not any(touches(key, prefix) for key in changed for prefix in settings)):
            kept.append(name)
    return kept


def owner(relative: str, patterns: dict[str, list[str]]) -> str | None:
    """The stage that wrote a file (a path relative to the work folder): the one whose pattern matches
    the path or a folder above it most narrowly (``text_lm/eval.json`` is the evaluation's, the rest of
    ``text_lm/`` the text LM's)."""
    parts = relative.split("/")
    ancestors = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    best, best_length = None, -1
    for stage, globs in patterns.items():
        for pattern in globs:
            if len(pattern) > best_length and any(fnmatch.fnmatchcase(a, pattern) for a in ancestors):
                best, best_length = stage, len(pattern)
    return best


def source_settings(source: Path) -> dict:
    """The settings a source folder's stages were made with, or a clear refusal."""
    job_file = source / jobs.JOB_FILE
    if not job_file.is_file():
        raise SystemExit(f"error: --from: {source} has no {jobs.JOB_FILE}: not a work folder of this recipe, "
                         "or made before settings were recorded")
    return json.loads(job_file.read_text())["settings"]


def fork(recipe, source: Path, ignored: Iterable[str] = ()) -> list[str]:
    """Take over ``source``'s stages that this recipe's settings do not reach into ``recipe.work``
    (claimed for this run's settings already); returns their names. ``ignored``: keys that select
    stages rather than shape them (the seeds, the arms). Idempotent: a finished fork is not redone,
    an interrupted one is finished."""
    source = source.resolve()
    record_path = recipe.w(RECORD)
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record["source"] != str(source):
            raise SystemExit(f"error: --from: {recipe.work} was started from {record['source']}, not {source}")
        if record["done"]:
            return record["kept"]
    elif any(recipe.w("stages").glob("*.json")):
        raise SystemExit(f"error: --from: {recipe.work} holds finished stages already; start from {source} "
                         "in a new --work")
    if source == recipe.work.resolve():
        raise SystemExit(f"error: --from: {source} is the work folder itself")
    settings = source_settings(source)
    finished = {p.stem for p in (source / "stages").glob("*.json")}
    kept = kept_stages(recipe, settings, finished, ignored)
    record = {"source": str(source), "differing": differing(recipe, settings, ignored), "kept": kept, "done": False}
    atomic.write_json(record_path, record)
    _link_files(source, recipe.work, {name: recipe.outputs(name) for name, _ in recipe.stages()}, set(kept))
    for name in kept:  # the markers last: a stage is done only once its files are all there
        atomic.write_text(recipe.w("stages", f"{name}.json"), (source / "stages" / f"{name}.json").read_text())
    atomic.write_json(record_path, {**record, "done": True})
    return kept


def _link_files(source: Path, work: Path, patterns: dict[str, list[str]], kept: set[str]) -> None:
    """Hard links to the kept stages' files; their symbolic links, to files or folders, made again as
    they are (``os.walk`` does not descend into a linked folder: its link is the stage's output)."""
    for folder, dirs, files in os.walk(source):
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            path = Path(folder) / name
            relative = path.relative_to(source).as_posix()
            if owner(relative, patterns) in kept:
                _link(path, work / relative)


def _link(path: Path, target: Path) -> None:
    if path.is_symlink():
        if target.is_symlink() and os.readlink(target) == os.readlink(path):
            return  # made by an interrupted fork
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        target.symlink_to(os.readlink(path))
        return
    if target.exists() and os.path.samefile(target, path):
        return  # linked by an interrupted fork
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    os.link(path, target)


def unshare(work: Path, patterns: list[str]) -> int:
    """Replace the hard-linked files among a stage's outputs (``patterns``, relative to ``work``) by
    private copies, so that a stage run again in a forked folder cannot write into the source's files.
    Returns how many it copied."""
    copied = 0
    for pattern in patterns:
        for top in work.glob(pattern):
            for path in [top] if top.is_file() else (p for p in top.rglob("*") if p.is_file()):
                if path.is_symlink() or path.stat().st_nlink < 2:
                    continue
                partial = path.with_name(path.name + ".unshare.partial")
                shutil.copy2(path, partial)
                partial.replace(path)
                copied += 1
    return copied
