"""Fixtures of the service tests: see :mod:`service.fixtures`."""

from service.fixtures import *  # noqa: F403
