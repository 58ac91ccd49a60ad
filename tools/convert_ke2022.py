"""Convert the nasal-swab part of Ke et al. 2022 (shedding-hub, ../shared/data/sarscov2) to a CSV.

    python tools/convert_ke2022.py ../shared/data/sarscov2/ke2022daily.yaml src/immunetwin/datasets/ke2022_nasal.csv

Data: Ke R, Martinez PP, Smith RL, et al. Daily longitudinal sampling of SARS-CoV-2 infection reveals
substantial heterogeneity in infectiousness. Nat Microbiol 7:640-652 (2022), doi
10.1038/s41564-022-01105-z; via shedding-hub (CC-BY-4.0).
"""

from __future__ import annotations

import csv
import sys

import yaml


def main(src: str, dst: str) -> None:
    with open(src) as fh:
        doc = yaml.safe_load(fh)
    with open(dst, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["participant", "age", "lineage", "days_since_onset", "copies_per_ml", "detected"])
        for i, person in enumerate(doc["participants"], start=1):
            attrs = person.get("attributes", {})
            for m in person["measurements"]:
                if m["analyte"] != "nasal_SARSCoV2":
                    continue
                detected = m["value"] != "negative"
                value = "" if not detected else repr(float(m["value"]))
                out.writerow(
                    [
                        f"ke{i:02d}",
                        attrs.get("age", ""),
                        attrs.get("lineage", ""),
                        m["time"],
                        value,
                        int(detected),
                    ]
                )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
