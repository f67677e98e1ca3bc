"""Render a preview comment as GitHub would show it and capture it with Chromium (docs/img/preview-comment.png).

The comment is built by the product's own code (`previews.comment_markdown`, `report_markdown`) from a
plan made with its semantic JSON diff; the markdown is rendered with markdown-it-py (CommonMark, HTML
allowed, as GitHub allows <details>) into a page styled like a GitHub comment, with the <details>
block opened so the diff shows. Run: `.venv/bin/python scripts/preview_comment_screenshot.py`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from markdown_it import MarkdownIt

from autodeployer.jsondiff import unified
from autodeployer.model import Action, Change, Plan
from autodeployer.previews import Preview, comment_markdown, report_markdown

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img" / "preview-comment.png"
CSS = """
body { font: 14px -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; background: #fff;
       margin: 24px; }
.comment { border: 1px solid #d0d7de; border-radius: 6px; max-width: 820px; }
.comment .head { background: #f6f8fa; border-bottom: 1px solid #d0d7de; padding: 8px 16px; color: #59636e; }
.comment .head b { color: #1f2328; }
.comment .body { padding: 4px 16px 12px; }
h3 { font-size: 16px; } code { background: #eff1f3; border-radius: 4px; padding: 1px 4px; font-size: 85%; }
pre { background: #f6f8fa; border-radius: 6px; padding: 12px; font-size: 12px; line-height: 1.45; overflow: auto; }
pre code { background: none; padding: 0; }
summary { cursor: pointer; } sub { color: #59636e; }
"""


def sample() -> Preview:
    orders = {"_id": "orders", "type": "pipe", "source": {"type": "dataset", "dataset": "erp-orders"}}
    changed = {**orders, "source": {"type": "dataset", "dataset": "erp-orders-v2"}, "batch_size": 500}
    invoices = {"_id": "invoices", "type": "pipe", "source": {"type": "dataset", "dataset": "erp-invoices"}}
    plan = Plan(changes=[Change(Action.CHANGE, "orders", "pipe", unified(orders, changed, "orders")),
                         Change(Action.ADD, "invoices", "pipe", unified(None, invoices, "invoices"))])
    return Preview(app="sesam-prod", number=42, head_sha="3f9c2e1a7b5d4c6e8f0a1b2c3d4e5f6a7b8c9d0e",
                   revision="9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b", live_revision="1c2d3e4f5a6b7c8d9e0f",
                   summary=plan.summary(), state="success", plan_text=plan.render(), planned_at=time.time())


def coloured(body: str) -> str:
    """GitHub's colouring of a `diff` fence: added lines green, removed red, hunks blue."""
    head, sep, rest = body.partition('<code class="language-diff">')
    code, end, tail = rest.partition("</code>")
    if not sep:
        return body
    styles = {"+": "color:#116329;background:#dafbe1", "-": "color:#82071e;background:#ffebe9", "@": "color:#0550ae"}
    lines = [f'<span style="display:block;{styles.get(line[:1], "")}">{line or " "}</span>'
             for line in code.rstrip("\n").split("\n")]
    return head + sep + "".join(lines) + end + tail


def html(markdown: str) -> str:
    body = coloured(MarkdownIt("commonmark", {"html": True}).render(markdown).replace("<details>", "<details open>"))
    return (f"<!doctype html><meta charset=utf-8><style>{CSS}</style><div class=comment><div class=head>"
            f"<b>autodeployer-bot</b> commented</div><div class=body>{body}</div></div>")


def main() -> int:
    preview = sample()
    link = "https://deploy.example.org/apps/sesam-prod/previews/42"
    markdown = comment_markdown(preview, report_markdown(preview, link))
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "comment.html"
        page.write_text(html(markdown))
        OUT.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--screenshot={OUT}", "--window-size=880,640",
                        page.as_uri()], check=True, capture_output=True, timeout=120)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
