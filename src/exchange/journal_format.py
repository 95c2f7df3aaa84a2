"""How a journal row stores its command and events: msgpack of the messages in array form.

Since ADR 0016 every message Struct is `array_like` (`[tag, field, field, ...]`): no field
names on disk: about a third of the bytes, which is what the journal costs a commit.
Releases before it wrote maps (`{"type": tag, "field": value, ...}`); those rows are still
read, through a slower path, so a journal written by an older release replays and feeds.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec

from .core import messages as m

encoder = msgspec.msgpack.Encoder()
encode_command = encoder.encode
_command_decoder: msgspec.msgpack.Decoder[m.Command] = msgspec.msgpack.Decoder(m.Command)  # type: ignore[arg-type]
_events_decoder: msgspec.msgpack.Decoder[list[m.Event]] = msgspec.msgpack.Decoder(list[m.Event])
_TAG_FIELD = "type"  # msgspec's default tag field: the key of the tag in the old map form


def _fields_by_tag(union: Any) -> dict[str, tuple[msgspec.structs.FieldInfo, ...]]:
    return {cls.__struct_config__.tag: msgspec.structs.fields(cls) for cls in get_args(union)}


_FIELDS = {**_fields_by_tag(m.Command), **_fields_by_tag(m.Event)}


def _as_array(item: Any) -> Any:
    """One old map-form message as the array form (a field the old row lacks takes its default)."""
    if not isinstance(item, dict):
        return item
    tag = item.get(_TAG_FIELD)
    fields = _FIELDS.get(tag) if isinstance(tag, str) else None
    if fields is None:
        raise msgspec.ValidationError(f"unknown message type {tag!r} in a journal row")
    out = [tag]
    for f in fields:
        if f.name in item:
            out.append(item[f.name])
        elif f.default is not msgspec.NODEFAULT:
            out.append(f.default)
        elif f.default_factory is not msgspec.NODEFAULT:
            out.append(f.default_factory())
        else:
            raise msgspec.ValidationError(f"journal row: {tag} has no {f.name}")
    return out


def decode_command(raw: bytes) -> m.Command:
    """A journal row's command, in either form."""
    try:
        return _command_decoder.decode(raw)
    except msgspec.ValidationError:
        return msgspec.convert(_as_array(msgspec.msgpack.decode(raw)), m.Command)  # type: ignore[arg-type]


def decode_events(raw: bytes) -> list[m.Event]:
    """A journal row's events, in either form."""
    try:
        return _events_decoder.decode(raw)
    except msgspec.ValidationError:
        old = msgspec.msgpack.decode(raw)
        if not isinstance(old, list):
            raise
        return msgspec.convert([_as_array(e) for e in old], list[m.Event])
