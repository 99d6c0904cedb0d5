"""``ais replay``: walk-forward replay of the governed loop (§L, issue 12), its tear sheet and
the policy what-if (``--compare``). Heavy imports happen inside the command."""

from __future__ import annotations

from pathlib import Path

import typer


def replay(
    start: str = typer.Option(..., "--start", help="First as-of session D (YYYY-MM-DD)."),
    end: str = typer.Option(..., "--end", help="Last as-of session (its D+1 is traded)."),
    out: Path = typer.Option(..., "--out", help="Directory for the replay's own warehouse, ledger, audit chain."),
    universe: Path | None = typer.Option(None, "--universe", help="Universe YAML (default: the policies' one)."),
    policies: Path | None = typer.Option(None, "--policies", help="Policy directory (default: policies/)."),
    provider: str = typer.Option("sample", "--provider", help="History provider: sample or files."),
    compare: Path | None = typer.Option(None, "--compare", help="Baseline replay --out to diff against."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a replay already in --out."),
) -> None:
    """Replay sessions START..END: nightly decisions as of D, execution in D+1 on the paper broker,
    book carried forward, lifecycle from realized paper performance. Prints the digest and the
    tear sheet's path."""
    from datetime import date

    from ais_pipelines.replay import ReplayConfig, ReplayError, run_replay
    from ais_pipelines.reports.tear_sheet import write_tear_sheet

    try:
        cfg = ReplayConfig(date.fromisoformat(start), date.fromisoformat(end), out.resolve(),
                           policies_dir=policies, universe_file=universe, provider=provider, overwrite=overwrite)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        result = run_replay(cfg, progress=lambda p: typer.echo(p.line()))
    except ReplayError as exc:
        typer.echo(f"replay refused: {exc}", err=True)
        raise typer.Exit(2) from exc
    sheet = write_tear_sheet(result.warehouse, result.out / "tear_sheet.html")
    from ais_pipelines.replay_marts import build_replay_marts

    marts = build_replay_marts(result.out)
    typer.echo(f"\n{len(result.sessions)} sessions in {result.seconds:.1f} s "
               f"({result.seconds / max(1, len(result.sessions)):.2f} s/session); "
               f"scripted human actions: {result.scripted_actions}")
    typer.echo(f"Digest:      {result.digest}")
    typer.echo(f"Warehouse:   {result.warehouse}")
    typer.echo(f"Ledger:      {result.ledger}")
    typer.echo(f"Tear sheet:  {sheet}")
    typer.echo(f"dbt marts:   schema replay of the warehouse: {marts.summary}" + ("" if marts.ok else f" ({marts.log})"))
    if compare is not None:
        from ais_pipelines.reports.what_if import write_what_if

        report = write_what_if(compare.resolve() / "warehouse.duckdb", result.warehouse,
                               result.out / "what_if.md")
        typer.echo(f"What-if:     {report}")
    if not marts.ok:
        raise typer.Exit(1)


def demo_replay(root: Path, sessions: int = 60) -> tuple[bool, list[str]]:
    """The demo's last step: the last ``sessions`` sample sessions replayed under runtime/replay.
    Progress is printed (the demo sends it to its log); returns (ok, summary lines)."""
    from ais_pipelines.config import Policies
    from ais_pipelines.core.calendars import last_n_sessions
    from ais_pipelines.replay import ReplayConfig, ReplayError, run_replay
    from ais_pipelines.reports.tear_sheet import write_tear_sheet

    last = Policies().providers.sample.end_session
    days = last_n_sessions("XNYS", last, sessions + 1)
    start, end = days[0].date(), days[-2].date()
    typer.echo(f"walk-forward replay: {sessions} sessions {start} → {end} (ais replay)")
    try:
        result = run_replay(ReplayConfig(start, end, root / "replay", overwrite=True),
                            progress=lambda p: typer.echo(p.line()))
    except ReplayError as exc:
        return False, [f"replay refused: {exc}"]
    sheet = write_tear_sheet(result.warehouse, result.out / "tear_sheet.html")
    return True, [f"{sessions} sessions {start} → {end}, digest {result.digest[:16]}…", f"tear sheet: {sheet}"]


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
