"""Small real datasets shipped with the package (with attribution; see README.md in this folder)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

from immunetwin.errors import UnknownIdError

__all__ = ["ke2022_nasal", "viral_load_table", "woelfel2020_sputum"]


def ke2022_nasal() -> pd.DataFrame:
    """Daily nasal SARS-CoV-2 RNA of 60 people (Ke et al. 2022, Nat Microbiol 7:640; CC-BY-4.0).

    Columns: ``participant``, ``age``, ``lineage``, ``days_since_onset``, ``copies_per_ml`` (NaN when
    negative), ``detected``.
    """
    with resources.files(__package__).joinpath("ke2022_nasal.csv").open() as fh:
        return pd.read_csv(fh)


def woelfel2020_sputum() -> pd.DataFrame:
    """Sputum SARS-CoV-2 RNA of 9 hospitalised patients (Wölfel et al. 2020, Nature 581:465; CC-BY-4.0).

    Values were digitised from the article's figure (shedding-hub); the limit of quantification is
    100 copies/mL (2 log10). Columns: ``participant`` (wo01..wo09), ``age``, ``sex``,
    ``days_since_onset``, ``copies_per_ml`` (NaN when negative), ``detected``. Use
    :func:`viral_load_table` for a twin's measurement table.
    """
    with resources.files(__package__).joinpath("woelfel2020_sputum.csv").open() as fh:
        return pd.read_csv(fh)


def viral_load_table(
    raw: pd.DataFrame, participant: str, *, incubation_days: float = 5.0, limit_log10: float = 2.0
) -> pd.DataFrame:
    """One participant's viral loads (from :func:`ke2022_nasal` or :func:`woelfel2020_sputum`) as a
    twin's measurement table.

    Model time is days since infection: ``days_since_onset + incubation_days`` (default 5 days, the
    median incubation period of SARS-CoV-2 in Lauer et al. 2020, Ann Intern Med 172:577); samples that
    would fall before infection are dropped. ``value`` is log10 copies/mL; negative samples are
    censored at ``limit_log10``.
    """
    rows = raw[raw["participant"] == participant]
    if rows.empty:
        raise UnknownIdError("participant", participant, tuple(sorted(raw["participant"].unique())))
    time = rows["days_since_onset"].to_numpy(dtype=float) + incubation_days
    detected = rows["detected"].to_numpy(dtype=bool)
    value = np.where(detected, np.log10(rows["copies_per_ml"].to_numpy(dtype=float)), limit_log10)
    keep = time >= 0
    return pd.DataFrame(
        {
            "observable": "viral_load",
            "time": time[keep],
            "value": value[keep],
            "censored": ~detected[keep],
        }
    )
