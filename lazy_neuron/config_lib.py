"""Experiment configs: big_vision-style files `configs/<exp>.py` with `get_config(arg=None)`.

  lazy-neuron train --config=configs/t5_offline.py:runlocal,steps=100 --config.model.topk=64

`parse_arg` types string args from their defaults and rejects unknown ones; `--config.a.b=v`
overrides are typed from the config's current value and reject unknown keys. Every error is a
one-line `UserError` naming the bad value and what is valid.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

from lazy_neuron import checks, data, optim
from lazy_neuron.errors import UserError

# Keys every experiment config has.
REQUIRED_KEYS = ("seed", "total_steps", "batch_size", "log_every_steps", "eval_every_steps",
                 "checkpoint_every_steps", "model", "data", "optimizer", "mesh", "sharding_rules",
                 "sparsity")


def _to_bool(name: str, s: str) -> bool:
  low = s.lower()
  if low in ("", "1", "true", "yes", "on"):
    return True
  if low in ("0", "false", "no", "off"):
    return False
  raise UserError(f"{name}={s!r} is not a boolean; use true or false")


def _convert(name: str, text: str, default: Any) -> Any:
  """Parses `text` to the type of `default` (None/tuple/list: a Python literal, else a string)."""
  if isinstance(default, bool):
    return _to_bool(name, text)
  try:
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
  except ValueError:
    raise UserError(f"{name}={text!r} is not a valid {type(default).__name__}") from None
  if isinstance(default, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if default is None:
      return text  # an unquoted string for a field without a type
    raise UserError(f"{name}={text!r} is not a valid Python literal for a "
                    f"{type(default).__name__}") from None
  if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(default)(value)
  return value


def parse_arg(arg: str | None, *, lazy: bool = False, runlocal_defaults: dict | None = None,
              runlocal_excludes: Sequence[str] = (), **spec: Any) -> ml_collections.ConfigDict:
  """`"a=1,b,c=x"` -> ConfigDict typed from the defaults in `spec`; a bare `b` means b=True.

  Unknown names are an error unless `lazy` (then kept as strings). `runlocal_defaults`: the
  defaults that replace those of `spec` when the `runlocal` arg is given; an arg given explicitly
  always wins over them (`runlocal,steps=2` runs 2 steps). `runlocal_excludes`: args that
  runlocal has no use for (it trains on offline data): giving one with runlocal is an error.
  """
  out = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return out
  given = set()
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    name, sep, value = item.partition("=")
    if name not in spec:
      if not lazy:
        valid = ", ".join(sorted(spec)) or "(none)"
        raise UserError(f"unknown config arg {name!r}; valid args: {valid}")
      out[name] = value
      continue
    out[name] = _convert(f"arg {name}", value if sep else "", spec[name]) if (
        sep or isinstance(spec[name], bool)) else _missing_value(name)
    given.add(name)
  if runlocal_defaults and out.get("runlocal"):
    for name, value in runlocal_defaults.items():
      if name not in given:
        out[name] = value
  if out.get("runlocal"):
    for name in runlocal_excludes:
      if name in given:
        raise UserError(f"config arg {name!r} cannot be combined with runlocal (runlocal trains "
                        f"on offline data and would ignore it); drop one of them")
  return out


def _missing_value(name: str):
  raise UserError(f"config arg {name!r} needs a value: {name}=VALUE")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path.py[:args]` -> the file's get_config(args), locked."""
  path, _, arg = spec.partition(":")
  if not path.endswith(".py"):
    raise UserError(f"--config={spec!r}: expected a Python config file configs/<exp>.py[:args]")
  if not os.path.isfile(path):
    raise UserError(f"--config file {path!r} does not exist")
  module_name = "lazy_neuron_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  # A config file is user input: an error in it is one line naming the file (and line), not a
  # traceback through this loader. A UserError raised by the file (parse_arg) passes as it is.
  try:
    module_spec.loader.exec_module(module)
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 - whatever the file's own code raises
    raise UserError(f"config file {path!r} could not be loaded: {_describe(e, path)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise UserError(f"config file {path!r} has no get_config(arg=None) function")
  try:
    config = module.get_config(arg or None)
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001
    raise UserError(f"config file {path!r}: get_config({(arg or None)!r}) failed: "
                    f"{_describe(e, path)}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"config file {path!r}: get_config must return an ml_collections.ConfigDict")
  missing = [k for k in REQUIRED_KEYS if k not in config]
  if missing:
    raise UserError(f"config file {path!r} lacks required keys: {', '.join(missing)}")
  config.lock()
  return config


def _describe(e: BaseException, path: str) -> str:
  """`SyntaxError: invalid syntax (line 3)`: the exception and, when known, the line in `path`."""
  line = getattr(e, "lineno", None) if isinstance(e, SyntaxError) else None
  if line is None:
    tb = e.__traceback__
    while tb is not None:
      if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
        line = tb.tb_lineno
      tb = tb.tb_next
  text = (getattr(e, "msg", None) if isinstance(e, SyntaxError) else None) or str(e)
  text = (text.strip().splitlines() or [""])[0][:200]
  return f"{type(e).__name__}: {text}" + (f" (line {line})" if line else "")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies `config.a.b=value` strings (as given after `--`), typed from the current values."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise UserError(f"--{key}: expected --{key}=VALUE")
    path = key.split(".")[1:]  # drop the leading "config"
    if not path:
      raise UserError(f"--{item}: expected --config.KEY=VALUE")
    node = config
    for i, part in enumerate(path):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        here = ".".join(["config"] + path[:i]) or "config"
        valid = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
        raise UserError(f"unknown config key {'.'.join(['config'] + path[:i + 1])!r}; "
                        f"valid keys of {here}: {valid}")
      if i < len(path) - 1:
        node = node[part]
    last = path[-1]
    # An optional field (a placeholder: `topk`, say) takes None back even when it holds a value.
    optional = isinstance(node._fields.get(last), ml_collections.FieldReference)  # pylint: disable=protected-access
    value = None if optional and text.strip() == "None" else _convert(key, text, node[last])
    try:
      with node.unlocked() if isinstance(node[last], type(None)) else contextlib.nullcontext():
        node[last] = value
    except (TypeError, ValueError) as e:
      raise UserError(f"--{key}={text!r}: {e}") from None


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`path.py[:args]` plus `config.k=v` overrides -> a validated, locked config."""
  config = load_config_file(spec)
  apply_overrides(config, overrides)
  validate_config(config)
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks that need no devices and write nothing (model, data, optimizer, step counts)."""
  checks.integer("total_steps", config.total_steps, min=1, max=checks.MAX_STEPS)
  checks.integer("batch_size", config.batch_size, min=1)
  checks.integer("eval_batch_size", config.get("eval_batch_size"), min=1, none_ok=True)
  checks.integer("log_every_steps", config.log_every_steps, min=1, max=checks.MAX_STEPS)
  for key in ("eval_every_steps", "checkpoint_every_steps"):
    checks.integer(key, config[key], min=0, max=checks.MAX_STEPS)
  checks.integer("seed", config.seed)
  optim.validate(config.optimizer, config.total_steps)
  data.validate(config.data)
  checks.boolean("sparsity.enabled", config.sparsity.enabled)
  checks.boolean("skip_nonfinite_updates", config.get("skip_nonfinite_updates", False))
  for key in ("keep_checkpoints", "keep_checkpoint_every_steps"):
    checks.integer(key, config.get(key), min=1, max=checks.MAX_STEPS, none_ok=True)
