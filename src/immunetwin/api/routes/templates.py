"""``/api/templates``: the template library (no patient data; any logged-in user)."""

from __future__ import annotations

from fastapi import APIRouter

from immunetwin.api.schemas import ObservablePublic, TemplatePublic
from immunetwin.api.state import CurrentUser, Service
from immunetwin.storage import NotFoundError
from immunetwin.templates import Template, list_templates

__all__ = ["router"]

router = APIRouter(prefix="/templates", tags=["templates"])


def _public(tpl: Template) -> TemplatePublic:
    meta = tpl.metadata
    observables = [ObservablePublic(name=k, unit=o.unit, loinc=o.loinc) for k, o in meta.observables.items()]
    return TemplatePublic(name=tpl.name, version=meta.version, title=meta.title, observables=observables,
                          interventions=list(meta.interventions), outcomes=list(meta.outcomes))  # fmt: skip


@router.get("", response_model=list[TemplatePublic])
def templates(state: Service, _principal: CurrentUser) -> list[TemplatePublic]:
    """Every shipped template: observables (units, LOINC codes), interventions and outcome metrics."""
    return [_public(state.cache.template(name)) for name in list_templates()]


@router.get("/{name}", response_model=TemplatePublic)
def template(state: Service, _principal: CurrentUser, name: str) -> TemplatePublic:
    """One template (404 for an unknown name)."""
    if name not in list_templates():
        raise NotFoundError("template", name)
    return _public(state.cache.template(name))
