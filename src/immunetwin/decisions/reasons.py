"""Plain-language reasons for a decision: the rule, the choice and its margin, the effect against the
reference scenario, how robust the choice is, and what was censored or excluded."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from immunetwin.decisions.rules import MinimiseRisk, _ties

if TYPE_CHECKING:
    from immunetwin.decisions.comparison import ScenarioComparison
    from immunetwin.decisions.decide import Decision, Sensitivity, Switch

__all__ = ["reasons"]


def _rule_line(c: ScenarioComparison, d: Decision) -> str:
    n = int(c.used.sum())
    return f"Rule: {d.rule.describe()}; estimated over {n} particles (effective sample size {d.ess:.0f})."


def _used_metrics(d: Decision) -> list[str]:
    return list(dict.fromkeys(m for s in d.scores for m in s.intervals))


def _infeasible_lines(d: Decision) -> list[str]:
    rule = d.rule
    out = [s for s in d.scores if not s.feasible]
    if not isinstance(rule, MinimiseRisk) or rule.harm is None or not out:
        return []
    harm = {s.scenario: s.probabilities[f"P({rule.harm})"] for s in d.scores}
    if d.chosen is None:
        best = min(harm, key=harm.__getitem__)
        return [
            f"No scenario keeps P({rule.harm}) at or below {rule.max_harm:g}: the smallest is "
            f"{harm[best]:.3f} under {best}. Relax max_harm or consider other scenarios."
        ]
    shown = ", ".join(f"{s.scenario} ({harm[s.scenario]:.3f})" for s in out)
    return [f"Excluded because P({rule.harm}) exceeds {rule.max_harm:g}: {shown}."]


def _choice_lines(c: ScenarioComparison, d: Decision) -> list[str]:
    if d.chosen is None:
        return []
    best = d.score(d.chosen)
    word = "highest" if d.higher_is_better else "lowest"
    interval = ""
    if not math.isnan(best.lower):
        interval = f" ({c.level:.0%} interval {best.lower:.4g} to {best.upper:.4g})"
    value = f"{best.value:.4g} ± {best.mcse:.2g} (Monte Carlo SE){interval}"
    out = [f"{d.chosen} has the {word} {d.criterion}: {value}.", *_margin_lines(d)]
    chosen = c.scenario(d.chosen)
    if chosen.treats:
        given = " + ".join(chosen.interventions) or chosen.name
        out.append(f"The best scenario gives {given}: TREAT ({chosen.description or chosen.name}).")
    else:
        out.append("The best scenario gives no treatment: DO NOT TREAT.")
    return out


def _margin_lines(d: Decision) -> list[str]:
    if d.chosen is None or d.runner_up is None:
        return []
    best, other = d.score(d.chosen).value, d.score(d.runner_up).value
    if _ties(best, other):
        return [f"It ties with {d.runner_up}; ties go to fewer interventions, then to the earlier scenario."]
    head = f"It beats {d.runner_up} ({other:.4g}) by {d.margin:.3g} ± {d.margin_mcse:.2g}"
    if d.margin > 2.0 * d.margin_mcse:
        return [f"{head}, more than two Monte Carlo standard errors: not a sampling accident."]
    return [f"{head}, within two Monte Carlo standard errors: use more particles before relying on it."]


def _effect_lines(c: ScenarioComparison, d: Decision) -> list[str]:
    target = d.chosen if d.chosen != c.reference else d.runner_up
    if target is None or target == c.reference:
        return []
    out = []
    for m in _used_metrics(d):
        s = c.summary(target, m)
        unit = f" {s.unit}" if s.unit and s.unit != "dimensionless" else ""
        out.append(
            f"{target} against {c.reference}: {m} changes by {s.diff_mean:+.3g}{unit} on average "
            f"({c.level:.0%} interval {s.diff_lower:+.3g} to {s.diff_upper:+.3g}); better in "
            f"{s.p_better:.0%} of the weight, worse in {s.p_worse:.0%}."
        )
    return out


def _sensitivity_line(s: Sensitivity) -> str:
    lo, hi = s.scanned
    if s.robust:
        return f"The choice is the same for every {s.term} from {lo:g}x to {hi:g}x its value ({s.base:g})."
    below = [sw for sw in reversed(s.switches) if sw.factor < 1.0]  # moving down from 1
    above = [sw for sw in s.switches if sw.factor >= 1.0]  # moving up from 1

    def step(word: str, sw: Switch, pick: str) -> str:
        target = getattr(sw, pick) or "no feasible scenario"
        return f"to {target} {word} {sw.factor:.3g}x ({sw.value:.3g})"

    down = ", then ".join(step("below", sw, "before") for sw in below)
    up = ", then ".join(step("above", sw, "after") for sw in above)
    a, b = s.unchanged
    held = f"The choice holds for {s.term} from {a:.3g}x to {b:.3g}x its value ({s.base:g})"
    return f"{held}; it switches {'; and '.join(p for p in (down, up) if p)}."


def _data_lines(c: ScenarioComparison, d: Decision) -> list[str]:
    total = c.used.size
    if d.excluded:
        per = ", ".join(f"{s} {n}" for s, n in c.failed.items())
        out = [
            f"{d.excluded} of {total} particles ({c.excluded_weight:.1%} of the weight) were excluded "
            f"because a solve failed under some scenario (failures: {per})."
        ]
    else:
        out = [f"All {total} particles solved under every scenario."]
    for m in _used_metrics(d):
        frac = {s: c.summary(s, m).censored for s in c.names} if m in c.timed else {}
        if any(f > 0 for f in frac.values()):
            shown = ", ".join(f"{s} {f:.0%}" for s, f in frac.items())
            out.append(
                f"{m} is censored at the horizon (day {c.horizon:g}) where the event had not happened, "
                f"so its means are restricted means (censored weight: {shown})."
            )
    return out


def reasons(comparison: ScenarioComparison, decision: Decision) -> tuple[str, ...]:
    """Sentences explaining ``decision``, in the order a reader needs them."""
    c, d = comparison, decision
    lines = [_rule_line(c, d), *_infeasible_lines(d), *_choice_lines(c, d), *_effect_lines(c, d)]
    lines += [_sensitivity_line(s) for s in d.sensitivity]
    return tuple(lines + _data_lines(c, d))
