"""Write the JSON Schema files and the AsyncAPI document from the msgspec types.

    python -m schemas.generate          # rewrite schemas/json/*.json, schemas/asyncapi.yaml
    python -m schemas.generate --check  # exit 1 if any committed file is stale

The committed files are for teams that do not use Python (payment consumers, the
gateway); the Python types are the source of truth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec
import yaml

from schemas.topics import TOPICS

HERE = Path(__file__).resolve().parent
JSON_DIR = HERE / "json"
ASYNCAPI = HERE / "asyncapi.yaml"


def json_schemas() -> dict[str, str]:
    out: dict[str, str] = {}
    for topic in TOPICS:
        name = topic.schema
        if name + ".schema.json" in out:
            continue
        schema = msgspec.json.schema(topic.union)
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                  "title": name, **schema}
        out[name + ".schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def _asyncapi_schema(node):
    """msgspec writes OpenAPI's discriminator object ({propertyName, mapping}); an
    AsyncAPI schema object wants the property name as a string."""
    if isinstance(node, dict):
        out = {k: _asyncapi_schema(v) for k, v in node.items()}
        d = out.get("discriminator")
        if isinstance(d, dict) and "propertyName" in d:
            out["discriminator"] = d["propertyName"]
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(v) for v in node]
    return node


def asyncapi() -> str:
    messages: dict[str, dict] = {}
    components: dict[str, dict] = {}
    channels: dict[str, dict] = {}
    operations: dict[str, dict] = {}
    for topic in TOPICS:
        name = topic.schema
        (_, defs) = msgspec.json.schema_components([topic.union],
                                                    ref_template="#/components/schemas/{name}")
        components.update(defs)
        members = topic.message_types()
        channel_messages = {}
        for member in members:
            key = member.__name__
            messages[key] = {
                "name": key,
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{key}"},
                "bindings": {"kafka": {"key": {"type": "string",
                                                "description": "certificate id"}}},
            }
            channel_messages[key] = {"$ref": f"#/components/messages/{key}"}
        channels[topic.name] = {
            "address": topic.name,
            "description": f"{topic.description} Produced by {topic.producer}. "
                           f"Key: certificate id. Schema: schemas/json/{name}.schema.json",
            "messages": channel_messages,
        }
        operations[f"receive-{topic.name}"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{topic.name}"},
        }
    doc = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Commission engine topics",
            "version": "1.0.0",
            "description": (
                "Every topic is keyed by certificate id with the same partition count. "
                "Money is an integer in minor units plus an ISO 4217 currency. "
                "Consumers of payments must tolerate unknown fields and dedupe on "
                "settlement_id; read with isolation.level=read_committed. Internal "
                "topics are not listed: the stages' changelogs and fraud-feed (the "
                "allocation stage's acquisitions for the fraud stage), msgpack state "
                "between the engine's own stages, not a contract (schemas/topics.py)."
            ),
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _asyncapi_schema(components)},
    }
    return yaml.safe_dump(doc, sort_keys=True, width=100)


def expected_files() -> dict[Path, str]:
    files = {JSON_DIR / name: text for name, text in json_schemas().items()}
    files[ASYNCAPI] = asyncapi()
    return files


def stale_files() -> list[Path]:
    return [p for p, text in expected_files().items()
            if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for p in stale:
            print(f"stale: {p.relative_to(HERE.parent)}", file=sys.stderr)
        return 1 if stale else 0
    JSON_DIR.mkdir(exist_ok=True)
    for path, text in expected_files().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
