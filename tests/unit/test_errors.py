"""The gateway's error table: every error the code can raise has its status's row, and the
routes' documented answers come from it."""

from __future__ import annotations

import diffq.store  # noqa: F401  (its errors, if it defines any, are ServiceErrors too)
from diffq.errors import NotFound, ServiceError, Unauthorized
from service.errors import ERRORS, PROTOCOL_ERRORS, STATUS_OF, error_responses
from service.waiters import TooManyWaiters


def _subclasses(cls: type[ServiceError]) -> set[type[ServiceError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_service_error_is_in_the_row_of_its_status() -> None:
    errors = _subclasses(ServiceError)
    assert TooManyWaiters in errors and len(errors) >= 10
    for error in errors:
        assert error.type in ERRORS[error.status].types, (error.__name__, error.status)


def test_a_type_has_one_status() -> None:
    listed = [kind for row in ERRORS.values() for kind in row.types]
    assert len(listed) == len(set(listed)) == len(STATUS_OF)


def test_responses_are_the_named_errors_statuses_and_the_protocol_layers() -> None:
    protocol = {STATUS_OF[e if isinstance(e, str) else e.type] for e in PROTOCOL_ERRORS}
    assert protocol == {408, 413, 431, 503}
    responses = error_responses(Unauthorized, NotFound, "bad_request")
    assert set(responses) == {400, 401, 404} | protocol
    assert responses[404]["description"] == ERRORS[404].description
    assert "headers" in responses[503] and "headers" not in responses[404]  # Retry-After where it is sent
