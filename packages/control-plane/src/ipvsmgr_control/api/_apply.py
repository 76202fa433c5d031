"""Declarative bulk apply of a whole config, with a dry run that shows the exact diff."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..state import FieldError, ValidationError, apply_diff, schema
from ._http import bad_request, bool_query, json_response, propose, read_body, readable

SECTIONS = {"services": schema.service, "vips": schema.vip, "vip_groups": schema.vip_group}
MAX_OBJECTS = 100_000


def validate_config(body: Any) -> dict[str, list[dict[str, Any]]]:
    """Every object of every section, with each error named by its place in the file."""
    if not isinstance(body, dict):
        raise bad_request("body", "must be an object with services, vips and/or vip_groups lists")
    unknown = [k for k in body if k not in SECTIONS]
    if unknown:
        raise bad_request(unknown[0], f"unknown section; expected one of {', '.join(SECTIONS)}")
    errors: list[FieldError] = []
    config = {section: _section(body, section, errors) for section in SECTIONS if section in body}
    if errors:
        raise ValidationError(errors)
    return config


def _section(body: dict[str, Any], section: str, errors: list[FieldError]) -> list[dict[str, Any]]:
    items = body[section] or []
    if not isinstance(items, list) or len(items) > MAX_OBJECTS:
        errors.append(FieldError(section, f"must be a list of at most {MAX_OBJECTS} objects"))
        return []
    out, keys = [], set()
    for i, item in enumerate(items):
        try:
            obj = SECTIONS[section](item, f"{section}[{i}]")
        except ValidationError as exc:
            errors.extend(exc.errors)
            continue
        key = obj.get("name", obj.get("address"))
        if key in keys:
            errors.append(FieldError(f"{section}[{i}]", f"duplicate {key!r} in the file"))
        keys.add(key)
        out.append(obj)
    return out


def routes() -> list[web.RouteDef]:
    async def apply(request: web.Request) -> web.Response:
        dry_run = bool_query(request, "dry_run")
        config = validate_config(await read_body(request))
        if dry_run:
            store = await readable(request)
            changes = apply_diff(store.objects, config)
            return json_response({"dry_run": True, "revision": store.revision, "changes": changes})
        result = await propose(request, {"op": "apply", "config": config})
        return json_response({"dry_run": False, "revision": result["revision"], "changes": result["changes"]})

    return [web.post("/v1/apply", apply)]
