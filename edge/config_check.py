"""``edge config check``: everything that would stop the gateway, found before it starts.

The file itself (TOML syntax, unknown keys, wrong types: edge/config.py) and, in the same pass
(a wrong key counts as its default), what it points to: the registry and rule files load (with ``[modbus] port`` set, the registry's Modbus
columns are valid), the category table loads and has every rule's
category, every file named by a ``*_file`` key exists, the device-model mappings and their
JavaScript codecs load (``[codecs]``, with each mapping's own file:line), and the data folder can be written.
Each problem is ``file:line: message``, with the line of the key in the config file, or
the line in the rule file for a rule's own problems.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel

from edge.config import GatewayConfig, _key_line, read_config


def check_config(path: Path) -> list[str]:
    """Every problem found, as ``file:line: message``; empty when the gateway can start."""
    config, problems = read_config(path)
    if config is None:  # not readable as TOML: nothing else can be checked
        return problems
    text = path.read_text(encoding="utf-8")

    def at(section: str, key: str, message: str) -> str:
        return f"{path}:{_key_line(text, (section, key))}: {section}.{key}: {message}"

    problems += _check_registry(config, at)
    problems += config.codecs.load()[1]
    categories, category_problems = _check_categories(config, at)
    problems += category_problems
    problems += _check_rules(config, categories, at)
    problems += _check_files(config, at)
    problems += _check_data_dir(config, at)
    return problems


def _check_registry(config: GatewayConfig, at) -> list[str]:
    from edge.registry import Registry, RegistryError

    if not config.registry.path.is_file():
        return [at("registry", "path", f"no such file: {config.registry.path}")]
    try:
        registry = Registry.load(config.registry.path)
    except RegistryError as error:
        return [at("registry", "path", line) for line in str(error).splitlines()]
    if config.modbus.port:  # polled: every Modbus device needs a unit id of its own and a known model
        from edge.ingest.modbus_poll import ModbusSetupError, polled_devices

        try:
            polled_devices(registry, config.modbus.poll_interval)
        except ModbusSetupError as error:
            return [at("registry", "path", f"{config.registry.path}: {error} ([modbus] port is set, so it is polled)")]
    return []


def _check_categories(config: GatewayConfig, at):
    from edge.orders.categories import Categories, CategoryError
    from edge.paths import default_categories

    path = config.orders.categories or default_categories()
    if not path.is_file():
        return None, [at("orders", "categories", f"no such file: {path}")]
    try:
        return Categories.load(path), []
    except CategoryError as error:
        return None, [at("orders", "categories", line) for line in str(error).splitlines()]


def _check_rules(config: GatewayConfig, categories, at) -> list[str]:
    from edge.engine import RuleFileError, load_rules

    missing = [p for p in config.rules.paths if not p.exists()]
    if missing:
        return [at("rules", "paths", f"no such file or folder: {p}") for p in missing]
    try:
        load_rules(config.rules.paths, categories.keys() if categories is not None else None)
    except RuleFileError as error:
        return [str(problem) for problem in error.problems]  # the rule file's own line
    return []


def _check_files(config: GatewayConfig, at) -> list[str]:
    """Every ``*_file`` setting (CA certificates, client certificates and keys) names a readable file."""
    problems = []
    for section_name in type(config).model_fields:
        section = getattr(config, section_name)
        if not isinstance(section, BaseModel):
            continue
        for key in type(section).model_fields:
            value = getattr(section, key)
            if not key.endswith("_file") or value in (None, ""):
                continue
            file = Path(value)
            if not file.is_file():
                problems.append(at(section_name, key, f"no such file: {file}"))
            elif not os.access(file, os.R_OK):
                problems.append(at(section_name, key, f"cannot read {file}"))
    return problems


def _check_data_dir(config: GatewayConfig, at) -> list[str]:
    problem = data_dir_problem(config.gateway.data_dir)
    return [at("gateway", "data_dir", problem)] if problem else []


def data_dir_problem(folder: Path) -> str:
    """Why ``edge run`` could not keep its files in ``folder`` ('' when it can).

    Tried the way ``edge run`` uses it: the missing folders are made (and removed again) and a
    file is written in it, so a read-only mount or a pseudo file system (/proc) is found too,
    where permission bits alone would say yes."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "write to" if existing == folder else f"create {folder} in"
        return f"cannot {what} {existing} (as user {_user()})"
    made: list[Path] = []
    try:
        for part in reversed([folder, *folder.parents]):
            if not part.exists():
                part.mkdir()
                made.append(part)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return ""  # a full partition is a degraded mode of edge run (it waits for room), not a wrong folder
        return f"cannot {'create' if not folder.exists() else 'write to'} {folder}: {error.strerror or error}"
    finally:
        for part in reversed(made):
            try:
                part.rmdir()
            except OSError:
                pass
    return ""


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())
