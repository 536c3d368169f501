"""search_images: providers behind one interface; no test touches the internet."""

from __future__ import annotations

import sys
import types

import pytest

from nbtrain import RateLimitError, SearchError, download_images, search_images, search_images_bing, search_images_ddg
from testkit import image_server


def test_a_provider_function_gives_unique_http_urls_capped_at_max_images():
    def stub(term, max_images):
        assert term == "grizzly bear"
        return [
            "http://a/1.jpg",
            {"image": "https://a/2.jpg"},
            {"contentUrl": "http://a/3.jpg"},
            "http://a/1.jpg",
            "javascript:alert(1)",
            {"title": "no url"},
            "http://a/4.jpg",
        ]

    assert search_images("grizzly bear", 3, provider=stub) == ["http://a/1.jpg", "https://a/2.jpg", "http://a/3.jpg"]


def test_search_then_download_runs_the_books_loop_on_a_local_server(tmp_path):
    server, base = image_server.serve()
    try:

        def local(term, max_images):
            return [f"{base}/photo/{k}.jpg" for k in range(max_images)]

        for o in ("grizzly", "black"):
            dest = tmp_path / "bears" / o
            dest.mkdir(parents=True, exist_ok=True)
            download_images(dest, urls=search_images(f"{o} bear", max_images=3, provider=local), progress=False)
    finally:
        server.shutdown()
    assert sorted(p.name for p in (tmp_path / "bears" / "grizzly").glob("*.jpg")) == [
        "00000000.jpg",
        "00000001.jpg",
        "00000002.jpg",
    ]


def test_bing_says_it_is_retired_and_what_to_use_instead():
    with pytest.raises(SearchError, match="retired.*search_images_ddg"):
        search_images_bing("key", "grizzly bear")


def test_duckduckgo_without_its_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ddgs", None)
    monkeypatch.setitem(sys.modules, "duckduckgo_search", None)
    with pytest.raises(ImportError, match=r"nbtrain\[search\]"):
        search_images_ddg("grizzly bear", 5)


def _fake_ddgs(monkeypatch, images):
    calls = []

    class DDGS:
        def images(self, term, max_results):
            calls.append(term)
            return images(term, max_results)

    monkeypatch.setitem(sys.modules, "ddgs", types.SimpleNamespace(DDGS=DDGS))
    return calls


def test_duckduckgo_results_give_their_image_urls(monkeypatch):
    _fake_ddgs(monkeypatch, lambda term, n: [{"image": f"https://img/{i}.jpg", "title": term} for i in range(n)])
    assert search_images_ddg("teddy bear", 4) == [f"https://img/{i}.jpg" for i in range(4)]


def test_a_rate_limit_is_one_clear_error_not_a_retry_loop(monkeypatch):
    class RatelimitException(Exception):
        pass

    def refuse(term, n):
        raise RatelimitException("https://duckduckgo.com/ 202 Ratelimit")

    calls = _fake_ddgs(monkeypatch, refuse)
    with pytest.raises(RateLimitError, match="rate-limiting"):
        search_images("grizzly bear", 10)
    assert calls == ["grizzly bear"]


@pytest.mark.parametrize(
    "term, max_images, provider, error",
    [
        ("", 10, "ddg", ValueError),
        ("bear", 0, "ddg", ValueError),
        ("bear", 10, "bing", ValueError),
        ("bear", 10, 42, TypeError),
    ],
)
def test_bad_arguments_say_what_to_pass(term, max_images, provider, error):
    with pytest.raises(error):
        search_images(term, max_images, provider=provider)
