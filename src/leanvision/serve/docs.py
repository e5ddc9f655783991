"""`/docs` of `leanvision serve`: the OpenAPI schema as one self-contained HTML page (no CDN, works offline).

FastAPI's own /docs loads Swagger UI from a CDN; this page is rendered on the server from `app.openapi()`: each
endpoint with its method, summary, parameters, request body types and responses, and a link to /openapi.json.
"""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{margin-top:2rem;font-size:1.05rem}code,.m{font-family:ui-monospace,monospace}
.m{display:inline-block;min-width:4.5rem;font-weight:bold}.get{color:#1864ab}.post{color:#2b8a3e}
ul{margin:.3rem 0 .6rem}p{margin:.3rem 0}.d{color:#555}"""


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    kind = schema.get("type", "")
    if kind == "array":
        return f"array of {_schema_text(schema.get('items', {}))}"
    if schema.get("format") == "binary":
        return "file"
    return str(kind or "value")


def docs_page(spec: dict[str, Any]) -> str:
    """The HTML page for an OpenAPI spec (as `app.openapi()` returns it); every value is HTML-escaped."""
    info = spec.get("info", {})
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{escape(info.get('title', 'API'))}"
             f" - API</title><style>{STYLE}</style></head><body>",
             f"<h1>{escape(info.get('title', 'API'))}</h1><p class=d>{escape(info.get('description', ''))}</p>",
             "<p>Machine-readable schema: <a href=\"openapi.json\">/openapi.json</a>.</p>"]
    for path, operations in spec.get("paths", {}).items():
        for method, op in operations.items():
            parts.append(f"<h2><span class=\"m {escape(method)}\">{escape(method.upper())}</span> "
                         f"<code>{escape(path)}</code> {escape(op.get('summary', ''))}</h2>")
            if op.get("description"):
                parts.append(f"<p class=d>{escape(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                parts.append("<p>Parameters:</p><ul>" + "".join(
                    f"<li><code>{escape(p.get('name', ''))}</code> ({escape(p.get('in', ''))}, "
                    f"{escape(_schema_text(p.get('schema', {})))}{', required' if p.get('required') else ''})"
                    f" {escape(p.get('description', ''))}</li>" for p in params) + "</ul>")
            body = (op.get("requestBody") or {}).get("content", {})
            if body:
                parts.append("<p>Request body: " + ", ".join(f"<code>{escape(t)}</code>" for t in body) + "</p>")
            responses = op.get("responses", {})
            if responses:
                parts.append("<p>Responses:</p><ul>" + "".join(
                    f"<li><code>{escape(str(code))}</code> {escape(r.get('description', ''))}</li>"
                    for code, r in responses.items()) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["docs_page"]
