"""The service from the command line: ``serve``, ``users``, ``sites``, ``patients``, ``ingest`` and the
stored-twin commands ``twin create|update|forecast|decide|report``.

The data folder is ``IMMUNETWIN_HOME`` (else the user's data folder) and the database
``IMMUNETWIN_DATABASE_URL`` (else the SQLite file in the data folder), created and migrated on first
use. These commands call the same service functions as the REST API, as the local operator: whoever
can run them can read the database file, so they act as an admin, and the audit log names them
``cli:<login name>``. Twin jobs run to their end in the command itself (no Dask cluster).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from immunetwin.errors import InputError

__all__ = ["patients_app", "register", "serve", "sites_app", "users_app"]

users_app = typer.Typer(
    help="Users of the service (roles: admin, clinician, modeller).", no_args_is_help=True
)
sites_app = typer.Typer(help="Sites (hospitals, study centres); patients and users belong to sites.", no_args_is_help=True)  # fmt: skip
patients_app = typer.Typer(help="Patients (pseudonymous ids per site).", no_args_is_help=True)
_console = Console(highlight=False)


def _open() -> tuple[Any, Any, Any]:
    """Settings, the migrated database and the CLI principal."""
    from immunetwin.service import settings_from_environ, system_principal
    from immunetwin.storage import open_database, upgrade_to_head

    settings = settings_from_environ(os.environ)
    settings.home.mkdir(parents=True, exist_ok=True)
    db = open_database(settings.database_url)
    upgrade_to_head(db)
    principal = system_principal()
    return settings, db, replace(principal, actor=f"cli:{getpass.getuser()}"[:64])


def _when(text: str | None, what: str) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not an ISO 8601 date and time") from None
    if when.tzinfo is None:
        raise InputError(f"{what} {text!r} has no timezone (add Z or +01:00)")
    return when


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the REST API and dashboard (uvicorn); the database is created and migrated first."""
    import uvicorn

    from immunetwin.api import create_app
    from immunetwin.storage import list_users

    settings, db, _ = _open()
    with db.transaction(readonly=True) as session:
        has_users = bool(list_users(session))
    db.close()
    _console.print(f"data folder: {settings.home}\ndatabase: {settings.database_url.split('@')[-1]}")
    if not has_users:
        _console.print(
            "No users yet. Create the first admin in another terminal (same IMMUNETWIN_HOME):\n"
            "  immunetwin sites add my-site\n  immunetwin users add admin --role admin\n"
            f"then log in at http://{host}:{port}/ (API docs: http://{host}:{port}/docs)"
        )
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Log-in name.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            help="At least 8 characters (asked if not given).",
        ),
    ],
    role: Annotated[list[str] | None, typer.Option(help="admin, clinician or modeller (repeat).")] = None,
    site: Annotated[
        list[str] | None, typer.Option(help="Site code whose patients the user sees (repeat).")
    ] = None,
    full_name: Annotated[str, typer.Option(help="Display name.")] = "",
) -> None:
    """Add a user."""
    from immunetwin.service import add_user

    _, db, principal = _open()
    user = add_user(
        db, principal, username, password, full_name=full_name, roles=role or (), sites=site or ()
    )
    _console.print(
        f"user {user.username}: roles {', '.join(user.roles) or '-'}; sites {', '.join(user.sites) or '-'}"
    )


@users_app.command("list")
def users_list() -> None:
    """List the users."""
    from immunetwin.service import list_users

    _, db, principal = _open()
    table = Table("username", "name", "roles", "sites", "active")
    for u in list_users(db, principal):
        table.add_row(
            u.username, u.full_name, ", ".join(u.roles), ", ".join(u.sites), "yes" if u.active else "no"
        )
    _console.print(table)


@sites_app.command("add")
def sites_add(
    code: Annotated[str, typer.Argument(help="Short code, e.g. charite.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
) -> None:
    """Add a site."""
    from immunetwin.service import add_site

    _, db, principal = _open()
    _console.print(f"site {add_site(db, principal, code, name).code}")


@sites_app.command("list")
def sites_list() -> None:
    """List the sites."""
    from immunetwin.service import list_sites

    _, db, principal = _open()
    for s in list_sites(db, principal):
        _console.print(f"{s.code}\t{s.name}")


@patients_app.command("add")
def patients_add(
    site: Annotated[str, typer.Argument(help="Site code.")],
    pseudonym: Annotated[str, typer.Argument(help="Pseudonymous patient id.")],
    reference_time: Annotated[
        str | None, typer.Option(help="Day 0 (ISO 8601 with timezone), e.g. symptom onset.")
    ] = None,
) -> None:
    """Add a patient."""
    from immunetwin.service import add_patient

    _, db, principal = _open()
    p = add_patient(db, principal, site, pseudonym, reference_time=_when(reference_time, "--reference-time"))
    _console.print(f"patient {p.id}: {p.site}/{p.pseudonym}")


@patients_app.command("list")
def patients_list(site: Annotated[str | None, typer.Option(help="Only this site.")] = None) -> None:
    """List patients."""
    from immunetwin.service import list_patients

    _, db, principal = _open()
    table = Table("id", "site", "pseudonym", "day 0")
    for p in list_patients(db, principal, site=site):
        table.add_row(
            str(p.id), p.site, p.pseudonym, p.reference_time.isoformat() if p.reference_time else "-"
        )
    _console.print(table)


def ingest(
    file: Annotated[
        Path, typer.Argument(help="FHIR R4 Observation/Bundle (.json) or measurement CSV (.csv).")
    ],
    site: Annotated[str, typer.Option(help="Site of the patients.")],
    template: Annotated[str, typer.Option(help="Template whose observables these are, e.g. viral_immune.")],
    create_patients: Annotated[bool, typer.Option(help="Add unknown pseudonyms as new patients.")] = False,
) -> None:
    """Store measurements (idempotent: a measurement stored before is counted as a duplicate)."""
    from immunetwin.service import ingest as ingest_payload

    if not file.is_file():
        raise InputError(f"{file}: file not found")
    kind = "csv" if file.suffix.lower() == ".csv" else "fhir"
    _, db, principal = _open()
    result = ingest_payload(db, principal, file.read_bytes(), kind=kind, site=site, template=template,
                            create_patients=create_patients)  # fmt: skip
    names = ", ".join(p.pseudonym for p in result.patients)
    _console.print(f"{result.inserted} stored, {result.duplicates} already there ({names})")


# -- stored twins -------------------------------------------------------------------------------------


def _patient_id(db: Any, principal: Any, ref: str) -> int:
    """``SITE/PSEUDONYM`` or a patient id."""
    from immunetwin.storage import NotFoundError, find_patient

    if ref.isdigit():
        return int(ref)
    site, _, pseudonym = ref.partition("/")
    with db.transaction(readonly=True) as session:
        found = find_patient(session, site, pseudonym) if pseudonym else None
    if found is None:
        raise NotFoundError("patient", ref)
    return found.id


def _run_job(settings: Any, db: Any, start: Any) -> Any:
    """Start a job with an inline runner (it runs to its end) and return it finished, or raise its error."""
    from immunetwin.service import InlineRunner, JobContext, TwinCache, get_job, system_principal

    runner = InlineRunner(JobContext(db, TwinCache(), settings.reports_dir))
    with _console.status("running the job (the model compiles first)..."):
        job = start(runner)
    job = get_job(db, system_principal(), job.id)
    if job.state != "done":
        raise InputError(f"job {job.id} {job.state}: {job.error or job.message}")
    return job


def twin_create(
    patient: Annotated[str, typer.Argument(help="SITE/PSEUDONYM or patient id.")],
    template: Annotated[str, typer.Option(help="Template name, e.g. viral_tiv.")],
    name: Annotated[str, typer.Option(help="Tells twins of one template apart.")] = "",
    draws: Annotated[
        int | None, typer.Option(help="Particles (default IMMUNETWIN_TWIN_DRAWS, 1000).")
    ] = None,
    starts: Annotated[
        int | None, typer.Option(help="MAP starts (default IMMUNETWIN_TWIN_STARTS, 8).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Personalise a stored patient's twin from their stored measurements (version 1)."""
    from immunetwin.service import TwinCache, start_twin

    settings, db, principal = _open()
    pid = _patient_id(db, principal, patient)
    created: list[Any] = []

    def start(runner: Any) -> Any:
        twin, job = start_twin(db, principal, runner, settings, TwinCache(), pid, template, name=name, draws=draws, seed=seed)  # fmt: skip
        created.append(twin)
        return job

    job = _run_job(settings, db, start)
    _console.print(f"twin {created[0].id}: {job.message}")


def twin_update(
    twin: Annotated[int, typer.Argument(help="Twin id.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Absorb the stored measurements the twin has not seen (one version per day; alerts stored)."""
    from immunetwin.service import start_assimilate

    settings, db, principal = _open()
    job = _run_job(settings, db, lambda runner: start_assimilate(db, principal, runner, twin, seed=seed))
    _console.print(f"twin {twin}: {job.message}")


def twin_forecast(
    twin: Annotated[str, typer.Argument(metavar="TWIN", help="Stored twin id, or a twin file (.zip).")],
    horizon: Annotated[float, typer.Option(help="Days after the twin's last data.")] = 28.0,
    out: Annotated[Path | None, typer.Option(help="CSV of every quantile.")] = None,
    treatment: Annotated[
        list[str] | None, typer.Option(help="Scenario term, e.g. 'antiviral(start=3)' (repeat).")
    ] = None,
) -> None:
    """Forecast a stored twin (or, given a file, the twin in that file)."""
    if not twin.isdigit() or Path(twin).exists():
        return _forecast_file(Path(twin), horizon, out, treatment)
    from immunetwin.service import TwinCache, forecast_twin

    _, db, principal = _open()
    view, fc = forecast_twin(
        db, principal, TwinCache(), int(twin), horizon=horizon, treatments=treatment or ()
    )
    table = Table(title=f"{view.patient.site}/{view.patient.pseudonym}: twin {twin} v{view.version.version} ({fc.scenario})")  # fmt: skip
    table.add_column("day")
    for name in fc.predictive:
        table.add_column(f"{name} median [90%]")
    for k in range(0, len(fc.times), max(1, len(fc.times) // 8)):
        cells = [f"{q[k, 2]:.3g} [{q[k, 0]:.3g}, {q[k, -1]:.3g}]" for q in fc.predictive.values()]
        table.add_row(f"{fc.times[k]:g}", *cells)
    _console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fc.to_frame().to_csv(out, index=False)
        _console.print(f"forecast written to {out}")
    return None


def _forecast_file(path: Path, horizon: float, out: Path | None, treatment: list[str] | None) -> None:
    """The file-based ``twin forecast`` of :mod:`immunetwin.cli.twin` (treatments as intervention names)."""
    from immunetwin.cli import twin as twin_cli

    twin_cli.forecast_cmd(path, horizon=horizon, out=out, treatment=treatment, arg=None)


def twin_decide(
    twin: Annotated[int, typer.Argument(help="Twin id.")],
    weights: Annotated[
        str, typer.Option(help="Utility weight per unit of each outcome metric, NAME=NUMBER,...")
    ],
    costs: Annotated[str, typer.Option(help="Cost of each intervention, same points.")] = "",
    scenario: Annotated[
        list[str] | None, typer.Option(help="Scenario spec (repeat); default: each intervention from now.")
    ] = None,
    horizon: Annotated[float, typer.Option(help="Days after the twin's last data to compare over.")] = 40.0,
) -> None:
    """Compare treatment scenarios over the twin's particles and decide by expected utility."""
    from immunetwin.cli.report import parse_pairs
    from immunetwin.service import TwinCache, decide_twin

    _, db, principal = _open()
    with _console.status("comparing scenarios"):
        _, _, decision = decide_twin(db, principal, TwinCache(), twin, weights=parse_pairs(weights, "--weights"),
                                     costs=parse_pairs(costs, "--costs"), scenarios=scenario, horizon=horizon)  # fmt: skip
    _console.print(f"decision: [bold]{decision.action}[/] {decision.chosen or ''}")
    for reason in decision.reasons:
        _console.print(f"  {reason}", markup=False)


def twin_report(
    twin: Annotated[int, typer.Argument(help="Twin id.")],
    out: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path("report.html"),
    horizon: Annotated[float, typer.Option(help="Forecast days after the twin's last data.")] = 14.0,
    weights: Annotated[str, typer.Option(help="Give weights (NAME=NUMBER,...) to add a decision.")] = "",
    costs: Annotated[str, typer.Option(help="Cost of each intervention, same points.")] = "",
) -> None:
    """Write the HTML report of a stored twin's newest version."""
    import shutil

    from immunetwin.cli.report import parse_pairs
    from immunetwin.service import job_report_path, start_report

    settings, db, principal = _open()
    w, c = parse_pairs(weights, "--weights"), parse_pairs(costs, "--costs")
    job = _run_job(settings, db, lambda runner: start_report(db, principal, runner, twin, horizon=horizon, weights=w, costs=c))  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job_report_path(db, principal, job.id, settings.reports_dir), out)
    _console.print(f"report: {out.resolve()}")


def register(app: typer.Typer, twin_app: typer.Typer) -> None:
    """Add the service commands to the ``immunetwin`` app and the stored-twin commands to ``twin``.

    ``twin forecast`` takes a stored twin's id or a twin file, so it replaces the file-only command
    of :mod:`immunetwin.cli.twin` (which it calls for files).
    """
    app.command("serve")(serve)
    app.command("ingest")(ingest)
    app.add_typer(users_app, name="users")
    app.add_typer(sites_app, name="sites")
    app.add_typer(patients_app, name="patients")
    twin_app.registered_commands[:] = [c for c in twin_app.registered_commands if c.name != "forecast"]
    for name, command in (("create", twin_create), ("update", twin_update), ("forecast", twin_forecast),
                          ("decide", twin_decide), ("report", twin_report)):  # fmt: skip
        twin_app.command(name)(command)
