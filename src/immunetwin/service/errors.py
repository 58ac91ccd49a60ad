"""Errors of the service layer (the API maps them to HTTP status codes, the CLI to one line)::

ImmunetwinError
├── InputError                       -> 422 (IngestError too: the message names the field)
├── StorageError
│   ├── NotFoundError                -> 404
│   └── ConflictError                -> 409
└── ServiceError
    ├── AuthenticationError          -> 401: no, unknown or expired credentials
    └── PermissionDeniedError        -> 403: the user may not do this, or not at this site
"""

from __future__ import annotations

from immunetwin.errors import ImmunetwinError

__all__ = ["AuthenticationError", "PermissionDeniedError", "ServiceError"]


class ServiceError(ImmunetwinError):
    """A request the service refuses for who is asking, not for what is asked."""


class AuthenticationError(ServiceError):
    """No credentials, or wrong, expired or revoked ones."""


class PermissionDeniedError(ServiceError):
    """The user is known but may not do this (role), or not to this site's patients."""
