"""Image search: a term to a list of image URLs for `download_images`, from a provider behind one interface.

A provider is any function `provider(term, max_images)` that returns URLs (or result dicts holding
one under 'image', 'contentUrl' or 'url'). DuckDuckGo is built in through the `ddgs` package (the
`search` extra), imported only when used. Providers are called once: a rate limit or a failure is
an error that says what happened, never a silent retry loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["RateLimitError", "SearchError", "search_images", "search_images_bing", "search_images_ddg"]

Provider = Callable[[str, int], Iterable[Any]]
_URL_KEYS = ("image", "contentUrl", "url")
_INSTALL = "pip install 'nbtrain[search]'  (or: pip install ddgs)"


class SearchError(RuntimeError):
    """The image search failed; the message says why and what to do."""


class RateLimitError(SearchError):
    """The search service refused more requests for now."""


def _ddgs_class():
    try:
        from ddgs import DDGS
    except ImportError:
        try:  # the package's former name
            from duckduckgo_search import DDGS
        except ImportError:
            raise ImportError(
                f"Searching DuckDuckGo needs the ddgs package, which is not installed:\n  {_INSTALL}\n"
                "Or pass your own provider: search_images(term, provider=my_function), where "
                "my_function(term, max_images) returns image URLs."
            ) from None
    return DDGS


def duckduckgo(term: str, max_images: int) -> list[str]:
    """Image URLs for `term` from DuckDuckGo, through the `ddgs` package."""
    DDGS = _ddgs_class()
    try:
        results = DDGS().images(term, max_results=max_images)
    except Exception as e:  # the package raises its own types; rate limits are told apart by name
        name = type(e).__name__.lower()
        if "ratelimit" in name or "202" in str(e) or "429" in str(e):
            raise RateLimitError(
                f"DuckDuckGo is rate-limiting this machine ({type(e).__name__}: {e}). Wait a few "
                "minutes before searching again, search fewer terms at once, or pass your own "
                "URL list to download_images."
            ) from e
        raise SearchError(
            f"The DuckDuckGo search for {term!r} failed ({type(e).__name__}: {e}). Check the internet "
            "connection, or pass your own URL list to download_images."
        ) from e
    return [r["image"] for r in results or [] if isinstance(r, dict) and r.get("image")]


PROVIDERS: dict[str, Provider] = {"ddg": duckduckgo, "duckduckgo": duckduckgo}


def _url_of(result: Any) -> str | None:
    if isinstance(result, str):
        return result.strip()
    if isinstance(result, dict):
        return next((str(result[k]).strip() for k in _URL_KEYS if result.get(k)), None)
    return next((str(getattr(result, k)).strip() for k in _URL_KEYS if getattr(result, k, None)), None)


def search_images(term: str, max_images: int = 200, provider: str | Provider = "ddg") -> list[str]:
    """Up to `max_images` unique http(s) image URLs for `term`, in the provider's order.

    `provider` is "ddg" (DuckDuckGo; needs the `search` extra) or a function `(term, max_images)`
    returning URLs or result dicts. Pass the result to `download_images(dest, urls=...)`.
    """
    if not isinstance(term, str) or not term.strip():
        raise ValueError(
            f"The search term must be a non-empty string, not {term!r}: e.g. search_images('grizzly bear')."
        )
    if not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"max_images must be a positive whole number, not {max_images!r}.")
    if isinstance(provider, str):
        if provider.lower() not in PROVIDERS:
            raise ValueError(
                f"Unknown search provider {provider!r}: use one of {sorted(PROVIDERS)}, or pass a "
                "function (term, max_images) -> URLs."
            )
        provider = PROVIDERS[provider.lower()]
    elif not callable(provider):
        raise TypeError(
            f"provider must be a name or a function (term, max_images) -> URLs, not {type(provider).__name__}."
        )
    urls: list[str] = []
    seen: set[str] = set()
    for result in provider(term, max_images) or []:
        url = _url_of(result)
        if url and url.lower().startswith(("http://", "https://")) and url not in seen:
            seen.add(url)
            urls.append(url)
        if len(urls) >= max_images:
            break
    return urls


def search_images_ddg(term: str, max_images: int = 200) -> list[str]:
    """Image URLs for `term` from DuckDuckGo: the fastai book's `search_images_ddg`."""
    return search_images(term, max_images, provider="ddg")


def search_images_bing(*args, **kwargs):
    """The fastai book's Bing search, which can no longer work: Microsoft retired the Bing Search APIs."""
    raise SearchError(
        "Microsoft retired the Bing Search APIs in August 2025, so search_images_bing cannot work "
        "(new keys are not issued and old ones stopped answering). Use search_images_ddg(term) "
        f"instead (needs: {_INSTALL}), or search_images(term, provider=my_function) with your own "
        "search function; then download_images(dest, urls=urls)."
    )
