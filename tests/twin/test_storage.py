"""save_twin / load_twin: one file with the whole history, refused when changed or truncated."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from immunetwin.errors import InputError
from immunetwin.templates import load_template
from immunetwin.twin import forecast, load_twin, save_twin


def test_round_trip_keeps_every_version(sequential_twin, tmp_path):
    path = save_twin(sequential_twin, tmp_path / "twin.zip")
    assert path.is_file() and not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    loaded = load_twin(path, template=sequential_twin.template)
    assert loaded.provenance == sequential_twin.provenance and loaded.verify()
    assert [t.provenance for t in loaded.history] == [t.provenance for t in sequential_twin.history]
    for a, b in zip(loaded.history, sequential_twin.history, strict=True):
        for name, arr in b.belief.arrays().items():
            np.testing.assert_array_equal(a.belief.arrays()[name], arr)
        assert a.observations.records() == b.observations.records()
        assert a.alerts == b.alerts and a.scores == b.scores and a.settings == b.settings and a.step == b.step
        assert a.belief.method == b.belief.method and dict(a.belief.diagnostics) == dict(b.belief.diagnostics)
    f1, f2 = forecast(sequential_twin, 3.0), forecast(loaded, 3.0)
    np.testing.assert_array_equal(f1.quantiles("viral_load"), f2.quantiles("viral_load"))


def test_loads_the_shipped_template_by_name(early_twin, tmp_path):
    loaded = load_twin(save_twin(early_twin, tmp_path / "t.zip"))
    assert loaded.template.name == "viral_tiv" and loaded.provenance == early_twin.provenance


def _rewrite(src, dst, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, change(item.filename, zin.read(item.filename)))


def test_a_changed_measurement_is_refused(sequential_twin, tmp_path):
    good = save_twin(sequential_twin, tmp_path / "good.zip")

    def edit(name, blob):
        if name != "twin.json":
            return blob
        manifest = json.loads(blob)
        manifest["versions"][2]["observations"][0][2] += 0.1  # version 3, first value
        return json.dumps(manifest).encode()

    _rewrite(good, tmp_path / "bad.zip", edit)
    with pytest.raises(InputError, match="version 3 fails its provenance check"):
        load_twin(tmp_path / "bad.zip", template=sequential_twin.template)


def test_changed_particles_are_refused(sequential_twin, tmp_path):
    good = save_twin(sequential_twin, tmp_path / "good.zip")

    def edit(name, blob):
        if name != "v2/theta.npy":
            return blob
        return blob[:-8] + np.float64(1.0).tobytes()

    _rewrite(good, tmp_path / "bad.zip", edit)
    with pytest.raises(InputError, match="version 2 fails its provenance check"):
        load_twin(tmp_path / "bad.zip", template=sequential_twin.template)


def test_truncated_foreign_or_missing_files_are_refused(early_twin, tmp_path):
    blob = save_twin(early_twin, tmp_path / "good.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match="not a twin file, or truncated"):
        load_twin(tmp_path / "cut.zip")
    (tmp_path / "text.zip").write_text("hello")
    with pytest.raises(InputError, match="not a twin file"):
        load_twin(tmp_path / "text.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("twin.json", json.dumps({"format": "something else", "versions": [1]}))
    with pytest.raises(InputError, match="not a twin file"):
        load_twin(tmp_path / "other.zip")
    with pytest.raises(InputError, match="not found"):
        load_twin(tmp_path / "nope.zip")


def test_a_different_template_is_refused(early_twin, tmp_path):
    path = save_twin(early_twin, tmp_path / "t.zip")
    with pytest.raises(InputError, match="differs from the template loaded now"):
        load_twin(path, template=load_template("tumor_immune"))


def test_saving_replaces_atomically(early_twin, sequential_twin, tmp_path):
    path = tmp_path / "t.zip"
    save_twin(early_twin, path)
    save_twin(sequential_twin, path)
    assert load_twin(path).version == sequential_twin.version
    with pytest.raises(InputError, match="is a folder"):
        save_twin(early_twin, tmp_path)
