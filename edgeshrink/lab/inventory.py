"""The lab inventory: which devices (boards) a lab run uses, read and validated.

One [[device]] per board: two names for one board (127.0.0.1 and localhost, a
host name and its address spelled alike) are refused, so two benchmarks never
run on one board at once.  See config.py for the file's layout.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeshrink.errors import ProfileError, TargetError
from edgeshrink.lab.spec import DEFAULT_THERMAL, Inventory, LabDevice
from edgeshrink.lab.toml_fields import TAG_RE, FieldReader, read_toml
from edgeshrink.profiles import get_profile
from edgeshrink.targets import DEFAULT_SSH_PORT, Target, get_target, local_target

_TARGET_KEYS = ("kind", "profile", "host", "port", "user", "key", "known_hosts", "python",
                "work_dir", "jump")  # fmt: skip
_DEVICE_KEYS = ("name", "target", *_TARGET_KEYS, "tags", "thermal", "reachable_from", "enabled")
_DEFAULT_KEYS = (*_TARGET_KEYS, "tags", "thermal", "reachable_from")


def load_inventory(path: str | os.PathLike[str], *, text: str | None = None) -> Inventory:
    """Read and validate an inventory; ``text`` (a stored copy) replaces reading the file."""
    path = Path(path)
    text, doc = read_toml(path, text, "inventory")
    r = FieldReader(path)
    r.keys(doc, ("defaults", "device"), "")
    defaults = r.table(doc, "defaults")
    r.keys(defaults, _DEFAULT_KEYS, "defaults.")
    for key in _TARGET_KEYS:
        if key != "port":
            r.string(defaults, key, "defaults.")
    r.integer(defaults, "port", "defaults.", minimum=1)
    r.strings(defaults, "tags", "defaults.", pattern=TAG_RE)
    r.strings(defaults, "thermal", "defaults.")
    r.strings(defaults, "reachable_from", "defaults.")
    base = path.parent
    devices: list[LabDevice] = []
    seen_names: dict[str, int] = {}
    seen_boards: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(r.entries(doc, "device", "device"), start=1):
        prefix = f"device[{index}]."
        name = r.entry_name(entry, "device", index, _DEVICE_KEYS)
        if name in seen_names:
            r.fail(f"{prefix}name '{name}' is also device[{seen_names[name]}]'s name")
        seen_names[name] = index
        prefix = f"device[{index}] ({name})."
        if r.boolean(entry, "enabled", prefix, True) is False:
            continue
        device = _read_device(r, name, {**defaults, **entry}, defaults, prefix, base)
        other = seen_boards.get(device.lock_key)
        if other is not None:
            r.fail(
                f"device[{index}] ({name}) is the same board as device[{other[0]}] ({other[1]}): "
                f"both reach {device.lock_key}",
                hint="one board, one [[device]]: two benchmarks must never run on one board at once",
            )
        seen_boards[device.lock_key] = (index, name)
        devices.append(device)
    if not devices:
        r.fail("every device is disabled (enabled = false)")
    return Inventory(path=path, text=text, devices=tuple(devices))


def _read_device(
    r: FieldReader,
    name: str,
    fields: dict[str, Any],
    defaults: dict[str, Any],
    prefix: str,
    base: Path,
) -> LabDevice:
    values: dict[str, Any] = {}
    for key in (
        "kind",
        "profile",
        "host",
        "user",
        "key",
        "known_hosts",
        "python",
        "work_dir",
        "jump",
    ):
        value = r.string(fields, key, prefix)
        if value is not None:
            values[key] = value
    port = r.integer(fields, "port", prefix, minimum=1)
    if port is not None:
        if port > 65535:
            r.fail(f"{prefix}port must be 1-65535, got {port}")
        values["port"] = port
    for key in ("key", "known_hosts"):
        if key in values:
            values[key] = str(r.resolve(values[key], base))
    own_tags = r.strings(fields, "tags", prefix, pattern=TAG_RE) or ()
    default_tags = r.strings(defaults, "tags", "defaults.", pattern=TAG_RE) or ()
    tags = tuple(dict.fromkeys((*default_tags, *own_tags)))
    thermal = r.strings(fields, "thermal", prefix) or DEFAULT_THERMAL
    reachable_from = r.strings(fields, "reachable_from", prefix) or ()
    target_ref = r.string(fields, "target", prefix)
    if target_ref is not None:
        ref = str(r.resolve(target_ref, base)) if target_ref.endswith(".toml") else target_ref
        try:
            target = get_target(ref)
        except TargetError as exc:
            r.fail(f"{prefix}target: {exc.message}", hint=exc.hint)
        target = replace(target, name=name, tags=tags, **values)
    else:
        kind = values.pop("kind", "ssh" if "host" in values else None)
        if kind is None:
            r.fail(
                f"{prefix[:-1]} says neither where it is (host) nor which target it is (target)",
                hint='give host = "..." for an SSH device, target = "NAME" for a saved target, '
                'or kind = "local" for this machine',
            )
        if kind not in ("ssh", "local"):
            r.fail(f'{prefix}kind must be "ssh" or "local", got {kind!r}')
        if kind == "ssh" and "host" not in values:
            r.fail(f"{prefix}host is required for an SSH device")
        if kind == "local":
            target = replace(local_target(), name=name, tags=tags, source=str(r.path),
                             **{k: v for k, v in values.items() if k in ("profile", "python", "work_dir")})  # fmt: skip
        else:
            target = Target(name=name, kind="ssh", tags=tags, source=str(r.path),
                            port=values.pop("port", DEFAULT_SSH_PORT), **values)  # fmt: skip
    if target.profile:
        try:
            get_profile(target.profile)
        except ProfileError as exc:
            r.fail(f"{prefix}profile: {exc.message}", hint=exc.hint)
    return LabDevice(
        name=name, target=target, tags=tags, thermal=thermal, reachable_from=reachable_from
    )
