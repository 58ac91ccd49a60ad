"""The dashboard in a real browser: headless Debian Chromium, driven by Playwright, against the app
served by uvicorn on a loopback port (embedded SQLite in a temporary data folder, jobs on the
in-process Dask cluster: as ``immunetwin serve`` runs).

A clinician logs in through the form, sees the patient list with its alert badge, opens the patient
and the twin (data, forecast bands drawn by Plotly, scenario comparison, decision, provenance), posts a
measurement and watches the twin move to its next version; a wrong password shows the error; a
clinician of another site gets the 403 page. Every request a page makes must go to the server itself
(plotly.js is served by the app), and no page may raise a JavaScript error.

The browser is Debian's (``/usr/bin/chromium``, or the path in ``IMMUNETWIN_CHROMIUM``), launched
through ``executable_path``: Playwright's own browser download is never used. Without the browser (or
the playwright package) the tests skip with the reason; under ``CI=true`` they fail instead
(``.ci/run`` installs Chromium with ``tools/install_chromium.sh``).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from immunetwin import storage
from immunetwin.api import create_app
from immunetwin.service import ServiceSettings
from immunetwin.storage import open_database, sqlite_url, upgrade_to_head
from immunetwin.twin import Twin
from service.fixtures import (  # noqa: F401 (session fixtures of the service tests, used here)
    EARLY,
    PASSWORD,
    World,
    cheap_password_hashing,
    make_world,
    store_twin,
    tiv_data,
    tiv_twin,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip
# A bound on waiting for a page or a job (cold JAX compilation on a loaded machine), not a speed target.
WAIT_MS = 300_000
FINAL = re.compile(r"^(done|failed|cancelled|interrupted)$")
HASH = re.compile(r"^[0-9a-f]{64}$")


def _absent(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}: the browser test must run in CI")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser executable: ``IMMUNETWIN_CHROMIUM`` or Debian's ``/usr/bin/chromium``."""
    path = os.environ.get("IMMUNETWIN_CHROMIUM", "").strip() or CHROMIUM
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        _absent(f"no Chromium at {path} (tools/install_chromium.sh installs Debian's; IMMUNETWIN_CHROMIUM names another)")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    """One headless Chromium for the module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _absent("the playwright package is missing (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=list(CHROMIUM_ARGS)
        )
        yield launched
        launched.close()


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread on a free loopback port; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_MS / 1000
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


@dataclass(frozen=True)
class Site:
    """The running server: its URL, the service tests' world and N1's twin (version 1 = ``tiv_twin``)."""

    url: str
    world: World
    twin_id: int


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiv_twin: Twin, tiv_data: pd.DataFrame) -> Iterator[Site]:  # noqa: F811
    """The app of a fresh data folder (SQLite), with two sites, their users, N1's twin and one open alert."""
    home = tmp_path_factory.mktemp("browser-home")
    settings = ServiceSettings(home=home, database_url=sqlite_url(home / "immunetwin.db"), twin_draws=200, job_threads=1)  # fmt: skip
    db = open_database(settings.database_url)
    try:
        upgrade_to_head(db)
        world = make_world(db)
        twin_id = store_twin(db, world, tiv_twin, tiv_data[tiv_data.time <= EARLY])
        with db.transaction() as session:
            storage.add_alert(session, world.north.id, "viral_load above the band")
    finally:
        db.close()
    with serving(create_app(settings, migrate=True)) as url:
        yield Site(url, world, twin_id)


@dataclass
class Visit:
    """A browser tab on the site, with what it asked outside the server and the JavaScript errors it saw."""

    page: Page
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def visit(browser: Browser, site: Site) -> Iterator[Visit]:
    """A fresh browser context (no cookies); afterwards, nothing was fetched elsewhere and no script failed."""
    context = browser.new_context(base_url=site.url)
    context.set_default_timeout(WAIT_MS)
    handle = Visit(context.new_page())

    def only_the_server(route: Any) -> None:
        if route.request.url.startswith(site.url + "/"):
            route.continue_()
        else:
            handle.outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    handle.page.on("pageerror", lambda exc: handle.errors.append(str(exc)))
    yield handle
    context.close()
    assert handle.outside == [], f"the pages asked for {handle.outside}: nothing may come from the network"
    assert handle.errors == [], f"JavaScript errors: {handle.errors}"


def log_in(page: Page, user: str, password: str = PASSWORD) -> int:
    """Fill in and send the log-in form; the status of the answer to the form's POST."""
    page.goto("/login")
    page.fill("#username", user)
    page.fill("#password", password)
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/login")) as answer:
        page.click("#login")
    page.wait_for_load_state()
    return answer.value.status


def data_rows(page: Page, table: str) -> list[str]:
    """The text of each data row (``td`` cells, not the header) of the table with id ``table``."""
    return page.locator(f"#{table} tr:has(td)").all_inner_texts()


def plots(page: Page) -> list[list[dict[str, Any]]]:
    """Every Plotly chart drawn on the page: its traces' name, type and x values (as plotly.js holds them)."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.figure .js-plotly-plot'), gd => gd._fullData.map(
               t => ({name: t.name, type: t.type, x: Array.from(t.x || [])})))"""
    )


def measured(page: Page) -> list[float]:
    """The days of the measured points in the page's first chart."""
    (trace,) = [t for t in plots(page)[0] if t["name"] == "measured"]
    return trace["x"]


def test_a_wrong_password_shows_the_error(visit: Visit) -> None:
    from playwright.sync_api import expect

    page = visit.page
    assert log_in(page, "clin_north", "not-the-password") == 401
    expect(page.locator("#error")).to_have_text("wrong username or password")
    assert not [c for c in page.context.cookies() if c["name"] == "immunetwin_token"]
    page.goto("/patients")
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.locator("h1")).to_have_text("Log in")


def test_a_clinician_of_another_site_cannot_see_the_patient(visit: Visit, site: Site) -> None:
    from playwright.sync_api import expect

    page = visit.page
    assert log_in(page, "clin_south") == 303
    rows = data_rows(page, "patients")
    assert len(rows) == 1 and "S1" in rows[0] and "N1" not in page.content()
    for path in (f"/patients/{site.world.north.id}", f"/twins/{site.twin_id}"):
        response = page.goto(path)
        assert response is not None and response.status == 403, path
        expect(page.locator("#status")).to_have_text("403 Forbidden")
        expect(page.locator("#error")).to_contain_text("clin_south has no access to site 'north'")
        assert page.locator(".figure").count() == 0 and "N1" not in page.content()
    response = page.goto("/twins/999999")
    assert response is not None and response.status == 404
    expect(page.locator("#status")).to_have_text("404 Not Found")


def test_a_clinician_reads_the_twin_decides_and_updates_it(visit: Visit, site: Site, tiv_twin: Twin) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page, twin = visit.page, site.twin_id
    assert log_in(page, "clin_north") == 303
    expect(page).to_have_url(re.compile(r"/patients$"))
    expect(page.locator("header")).to_contain_text("clin_north (clinician)")
    (row,) = data_rows(page, "patients")
    assert "north" in row and "N1" in row
    expect(page.locator("#patients .badge")).to_have_text("1")

    page.click("#patients a:text-is('N1')")
    expect(page.locator("h1")).to_have_text("north / N1")
    assert len(data_rows(page, "measurements")) == 6
    expect(page.locator(f"#twin-{twin}-version")).to_have_text("1")
    expect(page.locator("#alerts li.alert")).to_have_text(["viral_load above the band"])

    page.click(f"a:text-is('twin {twin}')")
    expect(page.locator("#summary")).to_contain_text(
        "Version 1, data up to day 3 (6 measurements), 200 particles"
    )
    expect(page.locator(".figure .js-plotly-plot .main-svg").first).to_be_visible()  # drawn by plotly.js
    assert len(plots(page)) == 1 and measured(page) == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    expect(page.locator("#versions code")).to_have_text([tiv_twin.provenance])
    expect(page.locator("main")).to_contain_text("provenance chain verified")

    page.fill("input[name=weights]", "viral_load_auc=1")
    page.fill("input[name=costs]", "antiviral=0.5")
    page.click("#decide")
    expect(page.locator("#decision strong")).to_have_text(re.compile(r"^(TREAT|DO NOT TREAT)$"))
    bands, scenarios = plots(page)
    assert {t["type"] for t in scenarios} == {"bar"}
    assert len(scenarios[0]["x"]) >= 2  # scenarios compared: at least treatment and no treatment
    assert any(t["name"] == "forecast median" for t in bands)

    page.click("h1 a:text-is('north/N1')")
    assert page.locator("#measurement-form select[name=template]").input_value() == "viral_tiv"
    page.fill("#measurement-form input[name=observable]", "viral_load")
    page.fill("#measurement-form input[name=value]", "4.2")
    page.fill("#measurement-form input[name=unit]", "log10 TCID50/mL")
    page.fill("#measurement-form input[name=time]", "2024-03-04T12:00:00+00:00")
    page.click("#post-measurement")
    expect(page.locator("#note")).to_have_text("1 stored, 0 already there; 1 twin updates queued")
    # The page reloads itself every few seconds while a job runs; the update is an assimilate job.
    state = page.locator("#jobs .job-state").first
    expect(state).to_have_text(FINAL, timeout=WAIT_MS)
    assert state.inner_text() == "done", data_rows(page, "jobs")
    expect(page.locator(f"#twin-{twin}-version")).to_have_text("2")
    assert len(data_rows(page, "measurements")) == 7

    page.click(f"a:text-is('twin {twin}')")
    expect(page.locator("#summary")).to_contain_text("Version 2, data up to day 3.5 (7 measurements)")
    assert measured(page) == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    hashes = page.locator("#versions code").all_inner_texts()
    assert len(hashes) == 2 and tiv_twin.provenance in hashes and len(set(hashes)) == 2
    assert all(HASH.match(h) for h in hashes)
    expect(page.locator("main")).to_contain_text("provenance chain verified")
