"""Fixtures of the API tests: those of the service tests (:mod:`service.fixtures`) and the app's client."""

from api_support import *  # noqa: F403

from service.fixtures import *  # noqa: F403
