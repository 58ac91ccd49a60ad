"""The web dashboard, served by the API app: log in, patients with alert badges, a twin's page (data,
forecast bands, alerts, scenario comparison, decision, provenance), and a form to post a measurement
that queues the twin's update.

A refused request (no access to the patient, no such twin, a bad value) is shown as an HTML page with
the same status code the REST API gives (:func:`immunetwin.api.errors.status_of`).

Pages are rendered on the server (Jinja2, Plotly figures of :mod:`immunetwin.web.figures`; plotly.js is
served from the installed plotly package, so nothing is fetched from the internet). The log-in token
is kept in an ``HttpOnly``, ``SameSite=Strict`` cookie, and every form carries a token derived from it
(double submit), so another site cannot post on the user's behalf. Every page calls the same service
functions as the REST API, so access rules and the audit log are the same.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute

from immunetwin import service
from immunetwin.api.errors import status_of
from immunetwin.errors import ImmunetwinError
from immunetwin.service import AuthenticationError, Principal

__all__ = ["COOKIE", "mount_dashboard"]

COOKIE = "immunetwin_token"


def _env() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(
        lambda name: resources.files("immunetwin.web").joinpath(f"templates/dashboard/{name}").read_text()
    )
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)


def _csrf(token: str) -> str:
    return hmac.new(token.encode(), b"immunetwin-dashboard-form", hashlib.sha256).hexdigest()[:32]


class _Pages:
    """Renders the dashboard's templates."""

    def __init__(self) -> None:
        self.env = _env()

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(name).render(**context), status_code=status)


def _page_route(pages: _Pages) -> type[APIRoute]:
    """A route class whose refusals (our errors) become an HTML error page with the API's status code."""

    class PageRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def page_or_error(request: Request) -> Response:
                try:
                    return await handler(request)
                except ImmunetwinError as err:
                    status = status_of(err)
                    return pages.render("error.html.j2", status=status, code=status, error=str(err),
                                        title=HTTPStatus(status).phrase, user=None)  # fmt: skip

            return page_or_error

    return PageRoute


class _LoginRequired(Exception):  # noqa: N818 (a redirect, not an error)
    """Not logged in (or the token expired): go to the log-in page."""


def _principal(request: Request) -> tuple[Principal, str]:
    token = request.cookies.get(COOKIE, "")
    try:
        return service.principal_from_token(request.app.state.service.db, token), token
    except AuthenticationError:
        raise _LoginRequired from None


Viewer = Annotated[tuple[Principal, str], Depends(_principal)]


def _check_form(token: str, csrf: str) -> None:
    if not hmac.compare_digest(_csrf(token), csrf):
        raise service.PermissionDeniedError("the form is stale or came from another site: reload the page")


# -- what the pages show --------------------------------------------------------------------------


def patients_context(state: Any, principal: Principal) -> dict[str, Any]:
    """The patient list with each patient's open alerts and twins."""
    patients = service.list_patients(state.db, principal)
    alerts = service.list_alerts(state.db, principal, open_only=True) if patients else ()
    badges = {p.id: sum(a.patient_id == p.id for a in alerts) for p in patients}
    return {"user": principal.user, "patients": patients, "badges": badges}


def patient_context(state: Any, principal: Principal, patient_id: int) -> dict[str, Any]:
    """A patient: measurements, twins (with their newest job) and alerts."""
    from immunetwin.templates import list_templates

    patient, rows = service.list_measurements(state.db, principal, patient_id)
    twins = service.list_twins(state.db, principal, patient_id)
    jobs = [j for j in service.list_jobs(state.db, principal, limit=50) if j.patient_id == patient_id][:5]
    alerts = service.list_alerts(state.db, principal, patient_id=patient_id)
    return {"user": principal.user, "patient": patient, "rows": rows, "twins": twins, "jobs": jobs,
            "alerts": alerts, "templates": list_templates(),
            "busy": any(not j.finished for j in jobs)}  # fmt: skip


def post_measurement(state: Any, principal: Principal, patient_id: int, template: str, observable: str,
                     value: str, unit: str, when: str) -> str:  # fmt: skip
    """Store one measurement (as a one-row CSV) and queue the update of the patient's twins."""
    import csv
    import io

    patient = service.get_patient(state.db, principal, patient_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows([["patient", "observable", "value", "unit", "time"], [patient.pseudonym, observable, value, unit, when]])  # fmt: skip
    result = service.ingest(
        state.db,
        principal,
        out.getvalue(),
        kind="csv",
        site=patient.site,
        template=template,
        cache=state.cache,
    )
    jobs = (
        service.start_updates(state.db, principal, state.runner, result.patients) if result.inserted else ()
    )
    return f"{result.inserted} stored, {result.duplicates} already there; {len(jobs)} twin updates queued"


def _figures(view: Any, fc: Any, comparison: Any) -> list[str]:
    import numpy as np

    from immunetwin.web.figures import band_figure, scenario_figure

    twin, empty = view.twin, (np.zeros(0), np.zeros((0, len(fc.levels))))
    measured = list(dict.fromkeys(str(o) for o in twin.observations.observable))
    figs = [band_figure(twin, n, empty, (fc.times, fc.quantiles(n, "predictive")), fc.levels, fc.units[n],
                        fc.lod.get(n)) for n in measured]  # fmt: skip
    if comparison is not None:
        figs.append(scenario_figure(comparison))
    return [f.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}) for f in figs]


def _pairs(text: str) -> dict[str, float]:
    from immunetwin.cli.report import parse_pairs

    return parse_pairs(text, "weights")


def twin_context(state: Any, principal: Principal, twin_id: int, weights: str, costs: str) -> dict[str, Any]:
    """A twin: forecast bands with the data, alerts, history with provenance, and (when weights are
    given) the scenario comparison and decision."""
    record, versions = service.twin_history(state.db, principal, twin_id)
    patient = service.get_patient(state.db, principal, record.patient_id)
    ctx: dict[str, Any] = {"user": principal.user, "record": record, "versions": versions, "patient": patient,
                           "weights": weights, "costs": costs, "figures": [], "decision": None, "twin": None,
                           "error": ""}  # fmt: skip
    if not versions:
        return ctx
    view, fc = service.forecast_twin(state.db, principal, state.cache, twin_id, horizon=14.0)
    comparison = decision = None
    if weights.strip():
        try:
            _, comparison, decision = service.decide_twin(state.db, principal, state.cache, twin_id,
                                                          weights=_pairs(weights), costs=_pairs(costs))  # fmt: skip
        except ImmunetwinError as err:
            ctx["error"] = str(err)
    outcomes = list(view.twin.template.metadata.outcomes)
    ctx |= {"twin": view.twin, "figures": _figures(view, fc, comparison), "decision": decision,
            "weights": weights or (f"{outcomes[0]}=1" if outcomes else "")}  # fmt: skip
    return ctx


def _router(pages: _Pages) -> APIRouter:
    router = APIRouter(include_in_schema=False, route_class=_page_route(pages))

    @router.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse("/patients", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_page(error: str = "") -> HTMLResponse:
        return pages.render("login.html.j2", error=error, user=None)

    @router.post("/login")
    def login(
        request: Request, username: Annotated[str, Form()], password: Annotated[str, Form()]
    ) -> Response:
        state = request.app.state.service
        try:
            issued = service.log_in(state.db, username, password, lifetime=state.settings.token_lifetime)
        except AuthenticationError as err:
            return pages.render("login.html.j2", status=401, error=str(err), user=None)
        response = RedirectResponse("/patients", status_code=303)
        max_age = int(state.settings.token_lifetime / timedelta(seconds=1))
        response.set_cookie(COOKIE, issued.secret, max_age=max_age, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")  # fmt: skip
        return response

    @router.post("/logout")
    def logout() -> RedirectResponse:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @router.get("/patients", response_class=HTMLResponse)
    def patients(request: Request, viewer: Viewer) -> HTMLResponse:
        return pages.render("patients.html.j2", **patients_context(request.app.state.service, viewer[0]))

    @router.get("/patients/{patient_id}", response_class=HTMLResponse)
    def patient(request: Request, viewer: Viewer, patient_id: int, note: str = "") -> HTMLResponse:
        ctx = patient_context(request.app.state.service, viewer[0], patient_id)
        return pages.render("patient.html.j2", csrf=_csrf(viewer[1]), note=note, **ctx)

    @router.post("/patients/{patient_id}/measurements")
    def measurement_form(
        request: Request, viewer: Viewer, patient_id: int, csrf: Annotated[str, Form()],
        template: Annotated[str, Form()], observable: Annotated[str, Form()], value: Annotated[str, Form()],
        unit: Annotated[str, Form()], time: Annotated[str, Form()] = "",
    ) -> RedirectResponse:  # fmt: skip
        _check_form(viewer[1], csrf)
        when = time.strip() or datetime.now(UTC).isoformat(timespec="seconds")
        try:
            note = post_measurement(request.app.state.service, viewer[0], patient_id, template, observable, value, unit, when)  # fmt: skip
        except ImmunetwinError as err:
            note = f"refused: {err}"
        return RedirectResponse(f"/patients/{patient_id}?{urlencode({'note': note})}", status_code=303)

    @router.post("/patients/{patient_id}/twins")
    def create_twin(request: Request, viewer: Viewer, patient_id: int, csrf: Annotated[str, Form()],
                    template: Annotated[str, Form()]) -> RedirectResponse:  # fmt: skip
        _check_form(viewer[1], csrf)
        state = request.app.state.service
        service.start_twin(
            state.db, viewer[0], state.runner, state.settings, state.cache, patient_id, template
        )
        return RedirectResponse(f"/patients/{patient_id}", status_code=303)

    @router.get("/twins/{twin_id}", response_class=HTMLResponse)
    def twin(
        request: Request, viewer: Viewer, twin_id: int, weights: str = "", costs: str = ""
    ) -> HTMLResponse:
        ctx = twin_context(request.app.state.service, viewer[0], twin_id, weights, costs)
        return pages.render("twin.html.j2", csrf=_csrf(viewer[1]), **ctx)

    @router.get("/static/plotly.min.js")
    def plotly_js() -> FileResponse:
        import plotly

        return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", media_type="text/javascript")  # fmt: skip

    @router.get("/static/dashboard.css")
    def css() -> Response:
        text = resources.files("immunetwin.web").joinpath("static/dashboard.css").read_text()
        return Response(text, media_type="text/css")

    return router


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` on ``app`` (an app of :func:`immunetwin.api.create_app`)."""
    pages = _Pages()
    app.include_router(_router(pages))

    @app.exception_handler(_LoginRequired)
    async def to_login(_request: Request, _exc: _LoginRequired) -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)
