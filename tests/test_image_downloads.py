"""download_images against a local server (127.0.0.1) that serves real images and the web's faults."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from nbtrain import download_images, image_sources, verify_images
from nbtrain.image_downloads import MANIFEST_NAME, read_manifest
from testkit import image_server


@pytest.fixture(scope="module")
def site():
    s = image_server.Site()
    server, base = image_server.serve(s)
    s.base = base
    yield s
    server.shutdown()


def _get(site, dest, *paths, **kwargs):
    urls = [p if "://" in p else site.base + p for p in paths]
    return download_images(dest, urls=urls, progress=False, **kwargs)


def _visible(dest):
    return sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))


def test_good_images_are_saved_with_fastais_names_and_a_report(site, tmp_path):
    df = _get(site, tmp_path, "/photo/0.jpg", "/photo/1.jpg", "/img/photo.webp")
    assert list(df.columns) == ["url", "file", "status", "reason", "bytes", "width", "height", "sha256", "duplicate_of"]
    assert list(df.status) == ["saved"] * 3
    assert _visible(tmp_path) == ["00000000.jpg", "00000001.jpg", "00000002.webp"]
    assert list(df.file) == [tmp_path / n for n in _visible(tmp_path)]
    assert (df.width[0], df.height[0]) == (64, 48)
    assert df.bytes[0] == (tmp_path / "00000000.jpg").stat().st_size


def test_the_report_is_kept_as_a_manifest_that_maps_files_to_their_urls(site, tmp_path):
    df = _get(site, tmp_path, "/photo/5.jpg", "/404.jpg")
    assert set(read_manifest(tmp_path)) == set(df.url)
    assert image_sources([tmp_path / "00000000.jpg", tmp_path / "elsewhere.jpg"]) == {
        tmp_path / "00000000.jpg": site.base + "/photo/5.jpg"
    }


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/404.jpg", "HTTP 404"),
        ("/html-200.jpg", "HTML page"),
        ("/truncated.jpg", "not a complete image"),
        ("/empty.jpg", "empty body"),
        ("/loop-a.jpg", "redirect loop"),
        ("/to-file.jpg", "non-http(s)"),
        ("/bomb.png", "decompression bomb"),
        ("/429-for-an-hour.jpg", "Retry-After of 3600 s"),
    ],
)
def test_a_fault_is_a_failure_with_its_reason_and_leaves_no_file(site, tmp_path, path, reason):
    df = _get(site, tmp_path, path)
    assert df.status[0] == "failed" and reason in df.reason[0], df.reason[0]
    assert _visible(tmp_path) == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "data:image/png;base64,iVBORw0KGgo=", "/etc/hostname", "ftp://example.com/a.jpg"]
)
def test_only_http_and_https_urls_are_fetched(tmp_path, url):
    df = download_images(tmp_path, urls=[url], progress=False)
    assert df.status[0] == "failed" and "only http and https" in df.reason[0]
    assert _visible(tmp_path) == []


def test_a_body_over_the_byte_cap_is_refused(site, tmp_path):
    df = _get(site, tmp_path, "/huge.jpg", max_bytes=1_000_000)
    assert df.status[0] == "failed" and "too large" in df.reason[0]


def test_a_trickling_server_is_cut_off_at_the_deadline(site, tmp_path):
    df = _get(site, tmp_path, "/trickle.jpg", deadline=1.5, timeout=4)
    assert df.status[0] == "failed" and "deadline of 1.5 s" in df.reason[0]
    assert _visible(tmp_path) == []


def test_server_errors_and_rate_limits_are_retried_after_the_wait_they_ask_for(site, tmp_path):
    df = _get(site, tmp_path, "/500-then-ok.jpg", "/429-then-ok.jpg")
    assert list(df.status) == ["saved", "saved"], list(df.reason)


def test_no_retries_means_one_try(site, tmp_path):
    df = _get(site, tmp_path, "/500-then-ok.jpg?fresh=1", retries=0)
    assert df.status[0] in ("failed", "saved")  # the server's first answer for this path may already be spent
    df = _get(site, tmp_path, "/429-for-an-hour.jpg", retries=0)
    assert df.status[0] == "failed"


def test_the_query_string_is_kept(site, tmp_path):
    df = _get(site, tmp_path, "/needs-query.jpg?id=7")
    assert df.status[0] == "saved"


def test_a_browser_user_agent_is_sent(site, tmp_path):
    _get(site, tmp_path, "/photo/9.jpg")
    assert any(a.startswith("Mozilla/5.0") for a in site.agents)


def test_a_worker_reuses_its_connection_to_a_server_that_keeps_it_alive(site, tmp_path):
    requests, connections = image_server.Handler.requests, image_server.Handler.connections
    df = _get(site, tmp_path, *[f"/photo/{k}.jpg" for k in range(100, 120)], n_workers=2)
    assert list(df.status) == ["saved"] * 20
    assert image_server.Handler.requests - requests == 20
    assert image_server.Handler.connections - connections <= 4


def test_a_connection_the_server_closed_while_idle_is_replaced_not_reported(site, tmp_path):
    df = _get(site, tmp_path, *[f"/closes-after/{k}.jpg" for k in range(5)], n_workers=1, retries=0)
    assert list(df.status) == ["saved"] * 5, list(df.reason)


def test_the_same_picture_from_two_urls_is_kept_once(site, tmp_path):
    df = _get(site, tmp_path, "/img/rgb.jpg", "/img/rgb.jpg?copy=2", "/img/rgb.jpg")
    assert sorted(df.status) == ["duplicate", "duplicate", "saved"]
    kept = df.file[df.status == "saved"].iloc[0]
    assert all(d == kept for d in df.duplicate_of[df.status == "duplicate"])
    assert len(_visible(tmp_path)) == 1


def test_every_format_that_decodes_is_kept(site, tmp_path):
    names = ["cmyk.jpg", "16bit.png", "palette.png", "exif-rotated.jpg", "photo.webp", "animated.gif"]
    df = _get(site, tmp_path, *[f"/img/{n}" for n in names])
    assert list(df.status) == ["saved"] * len(names), list(df.reason)
    assert verify_images(list(df.file)) == []


def test_url_file_and_max_pics_cap_the_list_and_urls_too(site, tmp_path):
    url_file = tmp_path / "urls.txt"
    url_file.write_text("\n".join(f"{site.base}/photo/{k}.jpg" for k in range(20, 26)) + "\n\n")
    assert len(download_images(tmp_path / "a", url_file=url_file, max_pics=3, progress=False)) == 3
    urls = [f"{site.base}/photo/{k}.jpg" for k in range(30, 36)]
    assert len(download_images(tmp_path / "b", urls=urls, max_pics=2, progress=False)) == 2


def test_a_rerun_resumes_from_the_manifest_without_fetching_again(site, tmp_path):
    paths = ["/photo/40.jpg", "/photo/41.jpg"]
    first = _get(site, tmp_path, *paths)
    served = image_server.Handler.requests
    again = _get(site, tmp_path, *paths)
    assert image_server.Handler.requests == served  # nothing was fetched again
    assert list(again.status) == ["saved", "saved"] and list(again.file) == list(first.file)
    assert "earlier run" in again.reason[0]
    assert _visible(tmp_path) == ["00000000.jpg", "00000001.jpg"]


def test_an_existing_file_is_never_overwritten(site, tmp_path):
    mine = io.BytesIO()
    Image.new("RGB", (5, 5), "blue").save(mine, "JPEG")
    (tmp_path / "00000000.jpg").write_bytes(mine.getvalue())
    df = _get(site, tmp_path, "/photo/50.jpg")
    assert (tmp_path / "00000000.jpg").read_bytes() == mine.getvalue()
    assert df.file[0] == tmp_path / "00000000-1.jpg"


def test_what_a_killed_run_left_is_cleaned_and_a_torn_manifest_line_is_skipped(site, tmp_path):
    _get(site, tmp_path, "/photo/60.jpg")
    (tmp_path / ".nbtrain-part-0123abcd").write_bytes(b"\xff\xd8 half a file")
    with open(tmp_path / MANIFEST_NAME, "a") as f:
        f.write('{"url": "http://127.0.0.1/cut-sh')
    df = _get(site, tmp_path, "/photo/60.jpg", "/photo/61.jpg")
    assert list(df.status) == ["saved", "saved"]
    assert not list(tmp_path.glob(".nbtrain-part-*"))
    lines = (tmp_path / MANIFEST_NAME).read_text().splitlines()
    assert sum(1 for line in lines if _parses(line)) == 2


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def test_bad_arguments_say_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="Pass the URLs"):
        download_images(tmp_path)
    with pytest.raises(TypeError, match="list of URLs"):
        download_images(tmp_path, urls="http://example.com/a.jpg")
    with pytest.raises(TypeError, match="must hold strings"):
        download_images(tmp_path, urls=[{"image": "http://example.com/a.jpg"}])
    assert _visible(tmp_path) == []


def test_verify_images_decodes_every_file_to_find_ones_truncated_after_the_header(site, tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(site.photo(1))
    cut = tmp_path / "cut.jpg"
    big = io.BytesIO()
    image_server.gradient(400, 300).save(big, "JPEG", quality=95)
    cut.write_bytes(big.getvalue()[: len(big.getvalue()) // 2])
    assert verify_images([good, cut]) == [cut]
    assert verify_images([good, cut], decode=False) == []


def test_where_an_image_came_from_shows_in_the_audit_table_and_on_the_cleaners_card(site, tmp_path):
    from nbtrain import ImageClassifierCleaner, ImageDataLoaders, Learner, Resize, audit
    from nbtrain.frontends import caption
    from testkit.tiny_models import small_cnn

    root = tmp_path / "bears"
    for k, cls in enumerate(("black", "grizzly")):
        _get(site, root / cls, *[f"/photo/{10 * k + i}.jpg" for i in range(6)])
    first = root / "black" / "00000000.jpg"
    url = site.base + "/photo/0.jpg"

    table = audit(root, with_bar=False)
    assert "source" in table.columns
    own = table.loc[table["path"] == first, "source"]
    assert len(own) and (own == url).all()

    dls = ImageDataLoaders.from_folder(root, valid_pct=0.25, item_tfms=Resize(32), bs=4, seed=0, num_workers=0)
    cleaner = ImageClassifierCleaner(Learner(dls, small_cnn(dls.c)), frontend="plain")
    rows = cleaner.state.scores.set_index("path")
    assert rows.loc[first, "source"] == url
    html = caption(next(cleaner.state.scores[cleaner.state.scores["path"] == first].itertuples()), dls.vocab, False)
    assert f"href='{url}'" in html and "127.0.0.1" in html
