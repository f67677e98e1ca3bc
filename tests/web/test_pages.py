"""The status page, rendered by real headless Chromium against `autodeployer run` as a process.

The DOM Chromium builds is checked for the app, the badges, the live revision and a coloured diff,
and for the absence of every secret the service was started with; the screenshots are decoded (plain
zlib, no imaging library) to prove the badge and diff colours are really painted, at desktop and at
phone width.
"""

from __future__ import annotations

import itertools
import os
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import httpx
import pytest

from autodeployer.web.pages import diff_class, relative_time
from autodeployer_emulators._server import LoopbackServer
from autodeployer_emulators.gitserver import WorkRepo

from ..helpers import (
    ADMIN_TOKEN,
    ALL_SECRETS,
    WEBHOOK_SECRET,
    entity_json,
    history_rows,
    pipe,
    wait_for,
)

CHROMIUM = "/usr/bin/chromium"
NOTIFY_SECRET = "notify-SECRET-0d1e2f3a4b5c"  # the secret part of NOTIFY_URL
SECRETS = (*ALL_SECRETS, NOTIFY_SECRET)

GREEN = (0x1A, 0x7F, 0x37)  # .b-synced
RED = (0xCF, 0x22, 0x2E)  # .b-refused
ADD_BG = (0xDA, 0xFB, 0xE1)  # + lines of a diff
DEL_BG = (0xFF, 0xEB, 0xE9)  # - lines of a diff
HUNK_BG = (0xDD, 0xF4, 0xFF)  # @@ lines
XSS = "<script>alert(1)</script>"


# --------------------------------------------------------------------------- chromium
def chromium_or_skip() -> str:
    """Skip only on a developer machine without chromium; in CI its absence is a failure."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not installed")


def chromium(profile: Path, url: str, *args: str, width: int = 1280) -> subprocess.CompletedProcess[str]:
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", "--force-color-profile=srgb", "--force-device-scale-factor=1",
        f"--user-data-dir={profile}", f"--window-size={width},1600", *args, url,
    ]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def dump_dom(profile: Path, url: str) -> str:
    dom = chromium(profile, url, "--dump-dom").stdout
    assert "</html>" in dom, dom[:500]
    return dom


def screenshot(profile: Path, url: str, png: Path, width: int) -> Counter[tuple[int, int, int]]:
    chromium(profile, url, f"--screenshot={png}", width=width)
    data = png.read_bytes()
    assert len(data) > 10_000, f"screenshot is only {len(data)} bytes"
    found_width, _, colours = png_colours(data)
    assert found_width == width
    return colours


# --------------------------------------------------------------------------- PNG, decoded by hand
def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _unfilter(kind: int, line: bytes, prev: bytes, bpp: int) -> bytes:
    if kind == 0:
        return line
    if kind == 2:
        return bytes((x + y) & 255 for x, y in zip(line, prev, strict=True))
    out = bytearray(line)
    if kind == 1:
        for c in range(bpp):
            out[c::bpp] = bytes(itertools.accumulate(line[c::bpp], lambda a, b: (a + b) & 255))
        return bytes(out)
    for i in range(len(out)):
        left = out[i - bpp] if i >= bpp else 0
        if kind == 3:
            out[i] = (out[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            upleft = prev[i - bpp] if i >= bpp else 0
            out[i] = (out[i] + _paeth(left, prev[i], upleft)) & 255
        else:
            raise AssertionError(f"bad PNG filter {kind}")
    return bytes(out)


def png_colours(data: bytes) -> tuple[int, int, Counter[tuple[int, int, int]]]:
    """(width, height, pixel count per RGB colour) of an 8-bit RGB/RGBA non-interlaced PNG."""
    width, height, rows = png_rows(data)
    colours: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        colours.update(row)
    return width, height, colours


def png_rows(data: bytes) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """(width, height, the RGB pixels of each row) of an 8-bit RGB/RGBA non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
    assert header is not None
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev, rows = bytes(stride), []
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(raw[start], raw[start + 1:start + 1 + stride], prev, bpp)
        rows.append(list(zip(row[0::bpp], row[1::bpp], row[2::bpp], strict=True)))
        prev = row
    return width, height, rows


def widest_run(rows: list[list[tuple[int, int, int]]], rgb: tuple[int, int, int]) -> int:
    """The longest horizontal run of exactly this colour in any row (a card's width, for its background)."""
    best = 0
    for row in rows:
        run = 0
        for pixel in row:
            run = run + 1 if pixel == rgb else 0
            best = max(best, run)
    return best


def pixels_near(colours: Counter[tuple[int, int, int]], rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    return sum(n for c, n in colours.items() if all(abs(a - b) <= tolerance for a, b in zip(c, rgb, strict=True)))


# --------------------------------------------------------------------------- the scenario
@pytest.fixture
def receiver():
    """Where NOTIFY_URL points: the page must not reveal that URL, whose path is a secret."""
    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    with LoopbackServer(app) as server:
        yield server


def commit(repo: WorkRepo, files: dict[str, str], message: str) -> str:
    repo.write(files)
    repo.commit(message)
    repo.push()
    return repo.head


def test_status_page_in_headless_chromium(service, app_env, config_repo: WorkRepo, state_dir: Path, receiver,
                                          tmp_path: Path):
    chromium_or_skip()
    env = {
        **app_env,
        "SYNC_INTERVAL": "0.3",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "NOTIFY_URL": f"{receiver.url}/hooks/{NOTIFY_SECRET}",
    }
    assert all(secret in env.values() or secret in env["NOTIFY_URL"] for secret in
               (app_env["GITHUB_TOKEN"], app_env["JWT"], WEBHOOK_SECRET, ADMIN_TOKEN, NOTIFY_SECRET))
    svc = service(env)
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")

    changed = pipe("orders", dataset="orders-v2")
    good = commit(config_repo, {"pipes/fresh.conf.json": entity_json(pipe("fresh")),
                                "pipes/orders.conf.json": entity_json(changed)}, f"add fresh {XSS}")
    wait_for(lambda: any(r["revision"] == good and r["result"] == "synced" for r in history_rows(state_dir)),
             what="synced commit")
    bad = commit(config_repo, {"pipes/broken.conf.json": '{"_id": "broken", "type": "pipe",'}, "broken pipe")
    wait_for(lambda: any(r["revision"] == bad and r["result"] == "refused" for r in history_rows(state_dir)),
             what="refused commit")

    profile = tmp_path / "chromium"
    index = dump_dom(profile, svc.url + "/")
    page = dump_dom(profile, svc.url + "/apps/node")
    for dom in (index, page):
        for secret in SECRETS:
            assert secret not in dom
        assert XSS not in dom and dom.count("<script") == 1  # only our own refresh script

    # overview: the app, its badge, the live revision (short sha + message) and the refusal
    assert '<a href="/apps/node">node</a>' in index
    assert 'class="badge b-refused">refused</span>' in index
    assert f"<code>{good[:7]}</code>" in index
    assert "add fresh &lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "broken.conf.json" in index  # the last error, shown because the app is refused
    assert "branch <code>master</code>" in index and "sesam" in index

    # app page: history with both results, revisions, summaries and the coloured diff
    assert 'class="badge b-refused">refused</span>' in page
    assert 'class="badge b-synced">synced</span>' in page
    assert f"<code>{bad[:7]}</code>" in page and f"<code>{good[:7]}</code>" in page
    assert "1 added, 1 changed" in page
    assert '<span class="head add">+ pipe fresh</span>' in page
    assert '<span class="add">    +  "_id": "fresh",</span>' in page
    assert '<span class="del">    -    "dataset": "src",</span>' in page
    assert '<span class="add">    +    "dataset": "orders-v2",</span>' in page
    assert '<span class="hunk">    @@' in page
    assert "invalid JSON" in page

    # pixels: badges and diff colours are painted, at desktop and at phone width
    desktop = screenshot(profile, svc.url + "/apps/node", tmp_path / "app.png", 1280)
    for name, rgb, least in (("synced badge", GREEN, 300), ("refused badge", RED, 300),
                             ("+ lines", ADD_BG, 2000), ("- lines", DEL_BG, 2000), ("@@ lines", HUNK_BG, 2000)):
        assert pixels_near(desktop, rgb) >= least, f"{name} not visible in the screenshot"
    overview = screenshot(profile, svc.url + "/", tmp_path / "index.png", 1280)
    assert pixels_near(overview, RED) >= 300
    phone = screenshot(profile, svc.url + "/apps/node", tmp_path / "phone.png", 390)
    for rgb in (GREEN, RED, ADD_BG, HUNK_BG):  # the phone diff box scrolls before the - line
        assert pixels_near(phone, rgb) >= 200
    phone_index = screenshot(profile, svc.url + "/", tmp_path / "phone-index.png", 390)
    assert pixels_near(phone_index, RED) >= 200


def test_pages_answer_over_http(service, app_env, config_repo: WorkRepo, state_dir: Path):
    """Headers that keep the page self-contained, a 404 page, and HTML escaping of names."""
    svc = service({**app_env, "SYNC_INTERVAL": "0.3"})
    wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first sync")
    response = httpx.get(svc.url + "/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in response.text
    assert "http://" not in response.text.split("<main")[0] and "https://" not in response.text  # no external asset
    assert response.headers["cache-control"] == "no-store"
    missing = httpx.get(svc.url + "/apps/%3Cb%3Enope")
    assert missing.status_code == 404 and "No app named &lt;b&gt;nope" in missing.text and "<b>" not in missing.text
    limited = httpx.get(svc.url + "/apps/node?limit=1")
    assert limited.status_code == 200 and limited.text.count('class="card sync"') == 1


def test_diff_classes_and_relative_times():
    assert diff_class("+ pipe a") == "head add" and diff_class("- system b") == "head del"
    assert diff_class("~ pipe c") == "head chg"
    assert diff_class("    --- live/pipe c") == "file" and diff_class("    +++ git/pipe c") == "file"
    assert diff_class("    @@ -1,2 +1,2 @@") == "hunk"
    assert diff_class("    +  x") == "add" and diff_class("    -  y") == "del" and diff_class("       z") == "ctx"
    assert relative_time(None, 100) == "never"
    assert relative_time(88, 100) == "12 s ago" and relative_time(280, 100) == "in 3 min"
    assert relative_time(100 - 7200, 100) == "2 h ago" and relative_time(100 - 3 * 86400, 100) == "3 d ago"


WHITE = (0xFF, 0xFF, 0xFF)  # a card's background (light scheme)


def test_overview_names_the_problem_shows_prune_warnings_and_uses_the_width(
        service, git_server, config_repo: WorkRepo, sesam, tmp_path: Path):
    """Two apps in one service: a refused Sesam commit's card leads with its first problem (file and line,
    not only "not deployable"); a Marathon app in sync that would prune an app shows that warning; and on
    a desktop the two cards share the width instead of sitting in two of three columns."""
    from autodeployer_emulators.marathon import MarathonEmulator

    from ..helpers import GIT_TOKEN, MARATHON_TOKEN, SESAM_JWT, base_env

    chromium_or_skip()
    shop = WorkRepo.create(tmp_path / "git" / "acme" / "shop.git", tmp_path / "shop-work", branch="dcos")
    commit(shop, {"specs/web.json": '{"id": "web", "cmd": "serve", "instances": 1}\n'}, "web")
    mara = MarathonEmulator(token=MARATHON_TOKEN, deploy_duration=0.01)
    mara.load_app({"id": "/orphan", "cmd": "old", "labels": {"DPLOY": "shop"}})  # ours, no longer in Git
    with mara.serve() as server:
        config = tmp_path / "apps.yaml"
        config.write_text(f"""
defaults:
  policy: {{interval: 0.3}}
apps:
  - name: node
    source: {{url: "{git_server.url_for('acme/config.git')}", branch: master, token_env: GITHUB_TOKEN}}
    target: {{kind: sesam, api_url: "{sesam.api_url}", jwt_env: JWT}}
  - name: shop
    source: {{url: "{git_server.url_for('acme/shop.git')}", branch: dcos, token_env: GITHUB_TOKEN}}
    target: {{kind: marathon, url: "{server.url}", token_env: MARATHON_TOKEN}}
""")
        env = base_env(GITHUB_TOKEN=GIT_TOKEN, JWT=SESAM_JWT, MARATHON_TOKEN=MARATHON_TOKEN,
                       STATE_DIR=str(tmp_path / "state"))
        svc = service(env, "--config", str(config))
        wait_for(lambda: httpx.get(svc.url + "/readyz").status_code == 200, what="first syncs")
        bad = commit(config_repo, {"pipes/a-fine.conf.json": entity_json(pipe("fine")),
                                   "pipes/broken.conf.json": '{"_id": "broken", "type": "pipe",',
                                   "pipes/nameless.conf.json": '{"type": "pipe"}'}, "broken pipe")
        wait_for(lambda: httpx.get(svc.url + "/api/apps/node").json()["status"] == "refused", what="refused")
        assert httpx.get(svc.url + "/api/apps/shop").json()["status"] == "synced"

        profile = tmp_path / "chromium"
        index = dump_dom(profile, svc.url + "/")
        node = index.split('id="app-node"')[1].split("</article>")[0]
        headline = node.split('class="error headline"')[1].split("</p>")[0]
        assert f"Refused at <code>{bad[:7]}</code>" in headline
        assert "pipes/broken.conf.json" in headline and "line 1 column" in headline
        assert "not deployable" not in node  # the problem says more than the error
        assert "nameless.conf.json" in node.split('class="problems"')[1]  # the other problem is listed
        shop_card = index.split('id="app-shop"')[1].split("</article>")[0]
        assert 'class="warnings"' in shop_card and "would prune /orphan" in shop_card
        page = dump_dom(profile, svc.url + "/apps/node")
        assert "pipes/broken.conf.json" in page.split('class="card facts-card"')[1].split("</section>")[0]

        png = tmp_path / "overview.png"
        chromium(profile, svc.url + "/", f"--screenshot={png}", width=1280)
        width, _, rows = png_rows(png.read_bytes())
        card = widest_run(rows[60:400], WHITE)
        assert width == 1280 and 520 <= card <= 1200, f"cards are {card} px wide on a 1280 px screen"
