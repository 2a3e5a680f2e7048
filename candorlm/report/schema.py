"""The JSON Schema of report.json (draft 2020-12). `validate` checks a report against it with the
`jsonschema` package; `candorlm report` validates what it writes, and a test does too.

report.json, in words:
- `schema_version` (1), `run` (the run directory), `generated` (ISO time), `command`;
- `model`: arch, parameters, d_model, n_layers, n_heads, vocab_size, seq_len, tokenizer;
- `sections`: exactly five, in order cost, compute, interpretability, privacy, generalization.
  Each has `id`, `title`, `status` (ok: all its data is there; partial: some is missing;
  missing: none is), `summary` (one line), `figures` (name, value, unit, source file; optional
  method, a one-sentence `note` on what it means, and `bound`: "upper" when the value is only an
  upper bound, as MFU against a peak probed beside other work), `tables` (title, columns, rows of
  cells; optional `units`, one per column, and a `note` saying what the table shows and what
  follows), `images` (key, title, the PNG's path or null for a figure drawn by the report itself,
  and a `caption` sentence), `missing` (what is absent and the command that produces it), and
  optionally `data` (the source numbers a table was made from).

Values keep canonical units (fraction, kWh, FLOP, s); the page shows them as people read them.
"""

from __future__ import annotations

from typing import Any

SECTION_IDS = ("cost", "compute", "interpretability", "privacy", "generalization")

_cell = {"type": ["string", "number", "integer", "boolean", "null", "array"]}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "candorlm report card",
    "type": "object",
    "required": ["schema_version", "run", "generated", "command", "model", "sections"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": 1},
        "run": {"type": "string"},
        "generated": {"type": "string", "format": "date-time"},
        "command": {"type": "string"},
        "model": {
            "type": "object",
            "required": ["arch", "parameters", "d_model", "n_layers", "n_heads", "vocab_size", "seq_len", "tokenizer"],
            "properties": {
                "arch": {"enum": ["decoder", "encoder", "seq2seq"]},
                "parameters": {"type": ["integer", "null"], "minimum": 0},
                "d_model": {"type": "integer", "minimum": 1},
                "n_layers": {"type": "integer", "minimum": 1},
                "n_heads": {"type": "integer", "minimum": 1},
                "vocab_size": {"type": "integer", "minimum": 0},
                "seq_len": {"type": "integer", "minimum": 1},
                "tokenizer": {"type": "string"},
            },
        },
        "sections": {
            "type": "array",
            "minItems": len(SECTION_IDS),
            "maxItems": len(SECTION_IDS),
            "prefixItems": [{"$ref": "#/$defs/section", "properties": {"id": {"const": sid}}} for sid in SECTION_IDS],
            "items": {"$ref": "#/$defs/section"},
        },
    },
    "$defs": {
        "section": {
            "type": "object",
            "required": ["id", "title", "status", "summary", "figures", "tables", "images", "missing"],
            "additionalProperties": False,
            "properties": {
                "id": {"enum": list(SECTION_IDS)},
                "title": {"type": "string", "minLength": 1},
                "status": {"enum": ["ok", "partial", "missing"]},
                "summary": {"type": "string"},
                "figures": {"type": "array", "items": {
                    "type": "object", "required": ["name", "value", "unit", "source"],
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "value": {"type": ["number", "integer", "string", "array", "null"]},
                                   "unit": {"type": "string"}, "source": {"type": "string"},
                                   "method": {"type": "string"}, "note": {"type": "string"},
                                   "bound": {"enum": ["upper", "lower"]}}}},
                "tables": {"type": "array", "items": {
                    "type": "object", "required": ["title", "columns", "rows"], "additionalProperties": False,
                    "properties": {"title": {"type": "string"},
                                   "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                   "units": {"type": "array", "items": {"type": "string"}},
                                   "rows": {"type": "array", "items": {"type": "array", "items": _cell}},
                                   "note": {"type": "string"}}}},
                "images": {"type": "array", "items": {
                    "type": "object", "required": ["key", "title", "path"], "additionalProperties": False,
                    "properties": {"key": {"type": "string"}, "title": {"type": "string"},
                                   "path": {"type": ["string", "null"]}, "caption": {"type": "string"}}}},
                "missing": {"type": "array", "items": {
                    "type": "object", "required": ["what", "command"], "additionalProperties": False,
                    "properties": {"what": {"type": "string"}, "command": {"type": "string", "minLength": 1}}}},
                "data": {"type": "object"},
            },
            "allOf": [
                {"if": {"properties": {"status": {"const": "missing"}}},
                 "then": {"properties": {"missing": {"minItems": 1}}}},
                {"if": {"properties": {"status": {"const": "partial"}}},
                 "then": {"properties": {"missing": {"minItems": 1}}}},
            ],
        },
    },
}


def validate(doc: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if `doc` is not a valid report.json."""
    import jsonschema

    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(doc)
