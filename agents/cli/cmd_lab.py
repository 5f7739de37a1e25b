"""Lab-level verbs: ``init`` and ``doctor``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autolab.agents.cli.common import JsonOpt, LabOpt, print_json, resolve_lab

# The templates shipped in autolab/templates, named here rather than listed from the
# package: listing it costs every command 30 ms at start-up (a test keeps both equal).
TEMPLATES = ("tiny-lm", "kernel", "blank")


def _template(text: str) -> str:
    """``--template``: a shipped template's name, or a directory holding an autolab.toml."""
    if text in TEMPLATES or (Path(text) / "autolab.toml").is_file():
        return text
    raise typer.BadParameter(f"{text!r} is not one of {', '.join(map(repr, TEMPLATES))}, "
                             "nor a directory holding an autolab.toml")


def init(
    path: Annotated[Path, typer.Argument(help="Where to create the lab.")],
    template: Annotated[str, typer.Option(
        parser=_template, metavar=f"<{'|'.join(TEMPLATES)}|DIR>",
        help=f"A shipped template ({', '.join(TEMPLATES)}) or a directory holding an "
        "autolab.toml; any other value is a usage error.")] = "tiny-lm",
    bare: Annotated[bool, typer.Option("--bare", help="Create a bare repository to use as "
                                       "the lab's remote.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a lab repository from a template (one commit on main)."""
    from autolab.agents.lab_init import init_lab

    created = init_lab(path, template, bare=bare)
    if as_json:
        print_json({"lab": str(created), "template": template, "bare": bare})
        return
    typer.echo(f"created lab {created} from template {template}"
               + (" (bare: use it as --lab)" if bare else ""))


def doctor(
    lab: LabOpt = None, as_json: JsonOpt = False,
    accept_rewrite: Annotated[bool, typer.Option(
        "--accept-rewrite", help="Follow a main that was rewritten (force-pushed) after "
        "you have inspected it.")] = False,
    fix: Annotated[bool, typer.Option(
        "--fix", help="Repair what can be repaired without losing a row (quarantine "
        "unreadable shards and record refs, drop exact duplicate rows), in one commit; "
        "refuse the rest.")] = False,
) -> None:
    """Check every shard, record ref and invariant of a lab; exit 1 on errors.

    Every finding names the file (or ref) and the commit. With --fix, repairs are made
    as one compare-and-swap commit on main whose message lists each of them, and the
    lab is checked again.
    """
    from autolab.protocol.doctor import check, repair
    from autolab.protocol.errors import LabError, shown
    from autolab.protocol.gitstore import GitStore

    store = GitStore(resolve_lab(lab))
    if accept_rewrite:
        typer.echo(f"following main at {store.accept_rewrite()[:12]}")
    try:
        snapshot = store.refresh()
    except LabError as exc:
        if as_json:
            print_json({"ok": False, "findings": [{"level": "error", "message": str(exc)}]})
        else:
            typer.echo(f"error: {shown(str(exc))}")
        raise typer.Exit(1) from None
    report = check(store, snapshot)
    fixed = None
    if fix and not report.ok:
        fixed = repair(store)
        if not as_json:
            # Every line names paths and refs from the remote: shown() keeps each one line.
            for line in fixed.quarantined:
                typer.echo(f"fixed: quarantined {shown(line)}")
            for path, count in fixed.deduplicated.items():
                typer.echo(f"fixed: dropped {count} duplicate rows from {shown(path)}")
            for line in fixed.moved_refs:
                typer.echo(f"fixed: moved record {shown(line)}")
            for line in fixed.refused:
                typer.echo(f"refused: {shown(line)}")
            if fixed.commit:
                typer.echo(f"repairs committed to main as {fixed.commit[:12]}; checking again")
        report = check(store, store.refresh())
    if as_json:
        extra = {"fix": fixed.to_dict()} if fixed is not None else {}
        print_json({**report.to_dict(), **extra})
    else:
        for finding in report.findings:
            typer.echo(str(finding))
        verdict = "ok" if report.ok else "PROBLEMS FOUND"
        typer.echo(f"{verdict}: {report.shards} shards, {report.rows} rows, "
                   f"{report.records} record refs checked")
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(doctor)
