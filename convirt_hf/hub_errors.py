"""Failures of a Hub upload as one line a user can act on: a rejected token, a missing permission, a network error.

huggingface_hub raises HTTP errors whose text spans several lines (URL, request id, server message) and network
errors from its HTTP client; a publishing command turns each into a [`PublishError`] that says what failed and what
to do, without a traceback and never with the token in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PublishError", "hub_errors"]

TOKEN_HELP = "set HF_TOKEN or run `hf auth login` with a token that has write access"


class PublishError(RuntimeError):
    """An upload to the Hub failed; the message is one line and holds no token."""


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _first_line(error: BaseException, token: str | None) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.replace(token, "***") if token else text


def _is_network_error(error: BaseException) -> bool:
    module = type(error).__module__ or ""
    return isinstance(error, (ConnectionError, TimeoutError)) or module.split(".")[0] in (
        "httpx", "httpx2", "httpcore", "requests", "urllib3")


def describe(error: BaseException, repo_id: str, endpoint: str, token: str | None = None) -> str | None:
    """The one-line message for a Hub failure, or None when `error` is not one (a bug, to be raised as it is)."""
    from huggingface_hub.errors import HfHubHTTPError

    status = _status(error)
    if isinstance(error, HfHubHTTPError) or status is not None:
        if status == 401:
            return f"The Hub at {endpoint} rejected the token (401 Unauthorized) for {repo_id}: {TOKEN_HELP}."
        if status == 403:
            return (f"The token may not write to {repo_id} on {endpoint} (403 Forbidden): use a token with write "
                    f"access to its namespace, or another repo id.")
        if status == 404:
            return f"{repo_id} was not found on {endpoint} (404): check the namespace and that the token may see it."
        return f"The Hub at {endpoint} refused the upload to {repo_id} ({status}): {_first_line(error, token)}"
    if _is_network_error(error):
        return (f"Could not reach the Hub at {endpoint} to upload {repo_id} ({type(error).__name__}: "
                f"{_first_line(error, token)}): check the network, or HF_ENDPOINT for a self-hosted Hub.")
    return None


@contextmanager
def hub_errors(repo_id: str, token: str | None = None) -> Iterator[None]:
    """Turns the Hub and network failures of the calls in the block into a one-line [`PublishError`]."""
    from huggingface_hub import constants

    try:
        yield
    except PublishError:
        raise
    except Exception as error:  # HTTP and network errors come from several libraries: classified by describe()
        message = describe(error, repo_id, constants.ENDPOINT, token)
        if message is None:
            raise
        raise PublishError(message) from None  # `from None`: the chained traceback would repeat what is said
