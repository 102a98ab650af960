"""Printed posters: each size printed to PDF by Chromium (as a person pressing Print would),
rasterised at 150 dpi with pdftoppm, and the QR code read back from the page image with
zxing-cpp. Checks that the code decodes to the join link, that the whole symbol and its
quiet zone lie on the page (nothing clipped), that it is centred and scaled to the page,
and that the page says what people get, from whom, who holds the data and where the
privacy notice is. Saves the A5 poster picture docs/join-links.md shows.

Skipped where Playwright, Chromium, pdftoppm or zxing-cpp is missing.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
import segno

from consentgate.bot.links import POSTER_SIZES, QUIET_ZONE, PosterSize
from consentgate.testing.harness import JANE_TOKEN, running_gateway
from tests.test_browser import CHROMIUM_ARGS, _chromium

ROOT = Path(__file__).resolve().parent.parent
PICTURE = ROOT / "docs" / "poster-a5.png"
DPI = 150
CONTROLLER = "Jane Doe campaign, 1 Example Road, London, privacy@jane.example.org"
PRIVACY = "https://jane.example.org/privacy"


def _read_pgm(path: Path) -> tuple[int, int, bytes]:
    """A binary PGM (P5, 8 bits) as (width, height, pixels)."""
    data = path.read_bytes()
    fields: list[bytes] = []
    at = 0
    while len(fields) < 4:
        while data[at:at + 1].isspace():
            at += 1
        if data[at:at + 1] == b"#":
            at = data.index(b"\n", at) + 1
            continue
        end = at
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[at:end])
        at = end
    assert fields[0] == b"P5" and fields[3] == b"255", fields
    width, height = int(fields[1]), int(fields[2])
    pixels = data[at + 1:]
    assert len(pixels) == width * height
    return width, height, pixels


def _check_printed_page(folder: Path, spec: PosterSize, url: str, zxingcpp: Any) -> None:
    """The rasterised page of one poster: one page of the paper's size, whose QR code reads
    as ``url`` and lies whole, quiet zone and all, centred on it at its intended size."""
    size = spec.name
    pages = sorted(folder.glob(f"{size}-*.pgm")) + sorted(folder.glob(f"{size}.pgm"))
    assert len(pages) == 1, f"{size}: the poster must fit one page, got {pages}"
    width, height, pixels = _read_pgm(pages[0])
    # The page is the paper size (within a pixel of rounding).
    assert abs(width - spec.width_mm / 25.4 * DPI) <= 2, (size, width)
    assert abs(height - spec.height_mm / 25.4 * DPI) <= 2, (size, height)

    image = memoryview(pixels).cast("B", (height, width))
    [found] = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert found.text == url, size

    corners = [found.position.top_left, found.position.top_right,
               found.position.bottom_right, found.position.bottom_left]
    left, right = min(c.x for c in corners), max(c.x for c in corners)
    top, bottom = min(c.y for c in corners), max(c.y for c in corners)
    modules = segno.make(url, error="m").symbol_size(scale=1, border=0)[0]
    module = (right - left + 1) / modules
    quiet = QUIET_ZONE * module
    # The whole symbol and its quiet zone lie on the page ...
    assert left - quiet >= 0 and top - quiet >= 0, (size, left, top, quiet)
    assert right + quiet < width and bottom + quiet < height, (size, right, bottom)
    # ... and the quiet zone is blank paper all round (nothing printed over it).
    q = int(quiet) - 1
    for y in range(int(top - q), int(bottom + q)):
        for x in (*range(int(left - q), int(left) - 1),
                  *range(int(right) + 2, int(right + q))):
            assert image[y, x] > 160, (size, "quiet zone not blank at", x, y)
    # Centred across the page, and as large as the poster's size says.
    centre = (left + right) / 2
    assert abs(centre - width / 2) <= 0.02 * width, (size, centre, width)
    printed_mm = (right - left + 1 + 2 * quiet) / DPI * 25.4
    assert abs(printed_mm - spec.qr_mm) <= 2, (size, printed_mm)


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()


@pytest.fixture
def tools() -> Any:
    playwright_api = pytest.importorskip("playwright.async_api")
    zxingcpp = pytest.importorskip("zxingcpp")
    if shutil.which("pdftoppm") is None:
        pytest.skip("no pdftoppm on this machine (apt-get install poppler-utils)")
    return playwright_api, zxingcpp, _chromium()


async def test_every_poster_size_prints_a_whole_centred_qr_code_that_scans(
        sqlite_url: str, tmp_path: Path, tools: Any) -> None:
    playwright_api, zxingcpp, executable = tools
    async with running_gateway(sqlite_url) as gw:
        code, link = await gw.api("POST", "/api/v1/links",
                                  {"channel": "sms", "name": "Bus shelter, Ward 3 (internal)"})
        assert code == 201, link
        posters = {}
        for size in POSTER_SIZES:
            async with gw.session.get(f"{gw.url}/api/v1/links/{link['id']}/poster",
                                      params={"size": size},
                                      headers={"Authorization": f"Bearer {JANE_TOKEN}"}) as r:
                assert r.status == 200
                posters[size] = await r.text()
        async with gw.session.get(f"{gw.url}/api/v1/links/{link['id']}/poster",
                                  params={"size": "A3"},
                                  headers={"Authorization": f"Bearer {JANE_TOKEN}"}) as r:
            assert r.status == 422 and (await r.json())["code"] == "invalid_size"

    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, headless=True,
                                          args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            for size, html in posters.items():
                await page.set_content(html)
                # What people read on the page (the link's internal name is not printed).
                text = await page.inner_text("body")
                assert "Jane Doe for President" in text and "by text message" in text
                assert "Yes, send me updates about Jane's campaign" in text
                assert CONTROLLER in text and PRIVACY in text
                assert link["url"].split("://", 1)[1] in text
                assert "Promoted by Jane Doe" in text
                assert "Ward 3 (internal)" not in text
                # Everything fits the sheet: nothing is cut off at its foot.
                await page.emulate_media(media="print")
                overflow = await page.evaluate(
                    "() => { const s = document.querySelector('.sheet');"
                    " return s.scrollHeight - s.clientHeight; }")
                assert overflow <= 0, (size, overflow)
                await page.pdf(path=str(tmp_path / f"{size}.pdf"), prefer_css_page_size=True,
                               print_background=True)
        finally:
            await browser.close()

    for size, spec in POSTER_SIZES.items():
        pdf = tmp_path / f"{size}.pdf"
        await _run("pdftoppm", "-r", str(DPI), "-gray", str(pdf), str(tmp_path / size))
        _check_printed_page(tmp_path, spec, link["url"], zxingcpp)

    PICTURE.parent.mkdir(exist_ok=True)
    await _run("pdftoppm", "-r", "60", "-png", "-singlefile", str(tmp_path / "A5.pdf"),
               str(PICTURE.with_suffix("")))
    assert PICTURE.read_bytes().startswith(b"\x89PNG")
