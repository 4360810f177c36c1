"""Rendering pages: Jinja2 templates with autoescaping, and the Content-Security-Policy they fit in.

The stylesheet is inlined and allowed by its hash, so the policy can forbid everything else: no
scripts, no frames, no loads from anywhere, forms only to this site.
"""

from __future__ import annotations

import base64
import hashlib

import jinja2
from aiohttp import web


class Pages:
    def __init__(self, templates: jinja2.Environment):
        self.templates = templates
        self.css, _, _ = templates.loader.get_source(templates, "style.css")
        digest = base64.b64encode(hashlib.sha256(self.css.encode()).digest()).decode()
        self.csp = (f"default-src 'none'; style-src 'sha256-{digest}'; form-action 'self'; "
                    "frame-ancestors 'none'; base-uri 'none'")

    def render(self, name: str, status: int = 200, **values) -> web.Response:
        html = self.templates.get_template(name).render(css=self.css, **values)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
