"""report.html (one self-contained page: inline CSS, PNGs as data URIs, a subset of the bundled
CJK font as a data URI, no script, no CDN) and report.md (the same content; images linked next
to it)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

from candorlm.fonts import CSS_FAMILY, embed_cjk_font
from candorlm.report.units import show


def cell(value: Any, unit: str = "") -> str:
    """A table cell or figure value as text, in units a person reads (`candorlm.report.units`)."""
    if value == "":
        return ""
    return show(value, unit)


def figure_value(f: dict[str, Any]) -> str:
    text = cell(f["value"], f["unit"])
    return f"at most {text}" if f.get("bound") == "upper" else text


def column_units(t: dict[str, Any]) -> list[str]:
    units = list(t.get("units") or [])
    return units + [""] * (len(t["columns"]) - len(units))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


_CSS = """
body { font-family: "{font}", system-ui, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace, "{font}"; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; }
nav a { margin-right: 1em; }
section { border-top: 3px solid #ddd; margin-top: 2em; padding-top: 0.5em; }
section.ok { border-color: #3a7; } section.partial { border-color: #d90; } section.missing { border-color: #c33; }
.status { font-size: 0.8em; padding: 0.1em 0.5em; border-radius: 0.6em; color: white; vertical-align: middle; }
.status.ok { background: #3a7; } .status.partial { background: #d90; } .status.missing { background: #c33; }
.summary { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
dl.figures { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
dl.figures dt { color: #555; } dl.figures dd { margin: 0; } dl.figures dd b { font-weight: 600; }
dl.figures dd .note, p.note { color: #555; font-size: 0.88em; font-weight: normal; }
p.note { margin: -0.4em 0 1.2em; max-width: 60em; }
.missing-list li { color: #8a2a00; } code { background: #f5f5f5; padding: 0.1em 0.3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #333; font-size: 0.92em; max-width: 60em; } figcaption b { font-weight: 600; }
""".replace("{font}", CSS_FAMILY)

_HTML = """<!DOCTYPE html>
<html lang="zh-CN">
<head><meta charset="utf-8"><title>candorlm report card: {{ doc.run }}</title>
<style>{{ css|safe }}</style></head>
<body>
<h1>Report card 报告卡</h1>
<p class="meta">run <code>{{ doc.run }}</code> · {{ doc.model.arch }}, {{ cell(doc.model.parameters) }} parameters,
d_model {{ doc.model.d_model }}, {{ doc.model.n_layers }} layers, {{ doc.model.tokenizer }} tokenizer
({{ cell(doc.model.vocab_size) }} tokens), context {{ doc.model.seq_len }} · generated {{ doc.generated }}
by <code>{{ doc.command }}</code></p>
<nav>{% for s in doc.sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
{% for s in doc.sections %}
<section id="{{ s.id }}" class="{{ s.status }}">
<h2>{{ s.title }} <span class="status {{ s.status }}">{{ s.status }}</span></h2>
{% if s.summary %}<p class="summary">{{ s.summary }}</p>{% endif %}
{% if s.figures %}<dl class="figures">{% for f in s.figures %}
<dt>{{ f.name }}</dt><dd title="from {{ f.source }}{% if f.method %}: {{ f.method }}{% endif %}"><b>{{ figure_value(f) }}</b>{% if f.note %}
<span class="note">· {{ f.note }}</span>{% endif %}</dd>{% endfor %}</dl>{% endif %}
{% for t in s.tables %}
<table><caption>{{ t.title }}</caption>
<tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% set units = column_units(t) %}{% for r in t.rows %}<tr>{% for v in r %}<td{% if v is number %} class="num"{% endif %}>{{ cell(v, units[loop.index0]) }}</td>{% endfor %}</tr>
{% endfor %}</table>{% if t.note %}
<p class="note">{{ t.note }}</p>{% endif %}
{% endfor %}
{% for im in s.images %}{% if im.uri %}
<figure><img src="{{ im.uri }}" alt="{{ im.title }}"><figcaption><b>{{ im.title }}.</b> {{ im.caption or "" }}</figcaption></figure>{% endif %}{% endfor %}
{% if s.missing %}<p>Not measured yet:</p><ul class="missing-list">{% for m in s.missing %}
<li>{{ m.what }}: run <code>{{ m.command }}</code></li>{% endfor %}</ul>{% endif %}
</section>
{% endfor %}
</body></html>
"""


def render_html(doc: dict[str, Any], images: dict[tuple[str, str], Path]) -> str:
    """The page; `images` maps (section id, image key) to the PNG to embed."""
    env = Environment(autoescape=select_autoescape(default=True))
    sections = []
    for s in doc["sections"]:
        shown = dict(s)
        shown["images"] = [dict(im, uri=data_uri(images[(s["id"], im["key"])])) for im in s["images"]
                           if (s["id"], im["key"]) in images]
        sections.append(shown)
    page = env.from_string(_HTML).render(doc=dict(doc, sections=sections), css=_CSS, cell=cell,
                                         figure_value=figure_value, column_units=column_units)
    return embed_cjk_font(page)  # Chinese reads right without a system CJK font


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: dict[str, Any], images: dict[tuple[str, str], Path], folder: Path) -> str:
    m = doc["model"]
    out = [f"# Report card: {doc['run']}", "",
           f"{m['arch']}, {cell(m['parameters'])} parameters, d_model {m['d_model']}, {m['n_layers']} layers, "
           f"{m['tokenizer']} tokenizer ({cell(m['vocab_size'])} tokens), context {m['seq_len']}. "
           f"Generated {doc['generated']} by `{doc['command']}`.", ""]
    for s in doc["sections"]:
        out += [f"## {s['title']} ({s['status']})", ""]
        if s["summary"]:
            out += [s["summary"], ""]
        for f in s["figures"]:
            note = f": {f['note']}" if f.get("note") else ""
            out.append(f"- {f['name']}: **{figure_value(f)}** ({f['source']}){note}")
        if s["figures"]:
            out.append("")
        for t in s["tables"]:
            out += [f"*{_md_escape(t['title'])}*", "", "| " + " | ".join(_md_escape(c) for c in t["columns"]) + " |",
                    "|" + "---|" * len(t["columns"])]
            units = column_units(t)
            out += ["| " + " | ".join(_md_escape(cell(v, u)) for v, u in zip(r, units)) + " |" for r in t["rows"]]
            out.append("")
            if t.get("note"):
                out += [_md_escape(t["note"]), ""]
        for im in s["images"]:
            path = images.get((s["id"], im["key"]))
            if path is not None:
                out += [f"![{im['title']}]({Path(os.path.relpath(path, folder)).as_posix()})", ""]
                if im.get("caption"):
                    out += [im["caption"], ""]
        for miss in s["missing"]:
            out.append(f"- not measured yet: {miss['what']}: run `{miss['command']}`")
        if s["missing"]:
            out.append("")
    return "\n".join(out)
