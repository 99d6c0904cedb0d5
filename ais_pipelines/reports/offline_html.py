"""Make written HTML work offline (issue 13): no external ``src``/``href`` in any page.

Great Expectations' Data Docs load CSS and JavaScript from CDNs, so offline the index is empty
and a validation page shows no detail. :func:`make_offline` copies the vendored assets
(``reports/static/data_docs``, unchanged copies from their npm packages) next to the pages and
rewrites every known CDN URL to the local copy; any other external reference is removed
(``<script>``/``<link>``/``<img>`` tags dropped, ``<a href>`` turned into plain text).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static" / "data_docs"
VENDOR_DIRNAME = "_vendor"

# CDN URL (as GE writes it) → vendored file (relative to STATIC_DIR).
VENDORED: dict[str, str] = {
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery-3.7.1.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap-4.3.1.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap-4.3.1.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper-1.12.9.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table-1.19.1.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table-1.19.1.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table-filter-control-1.19.1.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table-filter-control-1.19.1.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table-filter-control-1.19.1.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome-6.6.0/css/all.min.css",
}

_EXTERNAL = r'(?:https?:)?//[^"\']*'
_SCRIPT = re.compile(r'<script\b[^>]*\bsrc=["\'](' + _EXTERNAL + r')["\'][^>]*>\s*</script>', re.I)
_LINK = re.compile(r'<link\b[^>]*\bhref=["\'](' + _EXTERNAL + r')["\'][^>]*/?>', re.I)
_IMG = re.compile(r'<img\b[^>]*\bsrc=["\'](' + _EXTERNAL + r')["\'][^>]*/?>', re.I)
_ANCHOR_HREF = re.compile(r'(<a\b[^>]*?)\s+href=["\'](' + _EXTERNAL + r')["\']', re.I)
EXTERNAL_ATTR = re.compile(r'\b(?:src|href)\s*=\s*["\']\s*((?:https?:)?//[^"\']*)["\']', re.I)


def external_references(html: str) -> list[str]:
    """Every external URL in a ``src`` or ``href`` attribute (what must be empty offline)."""
    return EXTERNAL_ATTR.findall(html)


def rewrite_html(html: str, vendor_href: str) -> str:
    """``html`` with vendored URLs pointing at ``vendor_href`` and other external refs removed."""

    def local(url: str) -> str | None:
        name = VENDORED.get(url)
        return f"{vendor_href}/{name}" if name else None

    def script(m: re.Match[str]) -> str:
        path = local(m.group(1))
        return m.group(0).replace(m.group(1), path) if path else ""

    html = _SCRIPT.sub(script, html)
    html = _LINK.sub(script, html)
    html = _IMG.sub("", html)
    return _ANCHOR_HREF.sub(lambda m: m.group(1), html)


def make_offline(out_dir: Path) -> int:
    """Vendor the assets into ``out_dir/_vendor`` and rewrite every ``*.html`` below ``out_dir``.
    Returns the number of pages rewritten."""
    vendor = out_dir / VENDOR_DIRNAME
    shutil.copytree(STATIC_DIR, vendor, dirs_exist_ok=True, ignore=shutil.ignore_patterns("licenses"))
    shutil.copytree(STATIC_DIR / "licenses", vendor / "licenses", dirs_exist_ok=True)
    pages = 0
    for page in sorted(out_dir.rglob("*.html")):
        if vendor in page.parents:
            continue
        rel = Path(os.path.relpath(vendor, page.parent)).as_posix()
        text = page.read_text(encoding="utf-8")
        new = rewrite_html(text, rel)
        if new != text:
            page.write_text(new, encoding="utf-8")
            pages += 1
    return pages
