"""Convert the sputum part of Wölfel et al. 2020 (shedding-hub, ../shared/data/sarscov2) to a CSV.

    python tools/convert_woelfel2020.py ../shared/data/sarscov2/woelfel2020virological.yaml \
        src/immunetwin/datasets/woelfel2020_sputum.csv

Data: Wölfel R, Corman VM, Guggemos W, et al. Virological assessment of hospitalized patients with
COVID-2019. Nature 581:465-469 (2020), doi 10.1038/s41586-020-2196-x; values digitised from the
article's figure by shedding-hub (CC-BY-4.0).

Only sputum (RNA copies/mL) is kept: throat swabs are counted per swab (not per mL) and stool per
gram, so neither is on the scale of a template's ``viral_load`` observable. Rows that repeat another
row exactly (same participant, day and value) are written once.
"""

from __future__ import annotations

import csv
import sys

import yaml

ANALYTE = "sputum"


def main(src: str, dst: str) -> None:
    with open(src) as fh:
        doc = yaml.safe_load(fh)
    with open(dst, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["participant", "age", "sex", "days_since_onset", "copies_per_ml", "detected"])
        for i, person in enumerate(doc["participants"], start=1):
            attrs = person.get("attributes", {})
            seen: set[tuple[object, object]] = set()
            for m in person["measurements"]:
                if m["analyte"] != ANALYTE or (m["time"], m["value"]) in seen:
                    continue
                seen.add((m["time"], m["value"]))
                detected = m["value"] != "negative"
                value = "" if not detected else repr(float(m["value"]))
                out.writerow(
                    [
                        f"wo{i:02d}",
                        attrs.get("age", ""),
                        attrs.get("sex", ""),
                        m["time"],
                        value,
                        int(detected),
                    ]
                )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
