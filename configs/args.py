"""The one parser of config arguments (``--config configs/x.py:ARG``).

Every config file reads its argument with :func:`parse`: comma-separated
tokens, each a flag (``runlocal``), an option of a group (``mcycle`` of the
ablations) or a ``key=value`` pair (``class=Cat``). An unknown token is a
``ValueError`` naming it and listing what the file accepts, which the
command line reports as one line.
"""

from typing import Mapping, Optional, Sequence

import ml_collections


def parse(arg: Optional[str], *, config: str,
          groups: Optional[Mapping[str, Sequence[str]]] = None,
          flags: Sequence[str] = (),
          keys: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Parses a config argument.

  Args:
    arg: the text after ``:`` (None or '' for none).
    config: the config's name, for the error message.
    groups: {group: options}; at most one option of each group may be given,
      the first is the default.
    flags: tokens that are on when present.
    keys: names accepted as ``key=value``.

  Returns:
    A ConfigDict with one field per group (the chosen option), per flag
    (bool) and per key (its value, or None).

  Raises:
    ValueError: for an unknown token or two options of one group.
  """
  groups = dict(groups or {})
  out = ml_collections.ConfigDict()
  for group, options in groups.items():
    out[group] = options[0]
  for flag in flags:
    out[flag] = False
  for key in keys:
    out[key] = ml_collections.config_dict.placeholder(str)
  seen = set()
  for token in [t.strip() for t in (arg or "").split(",") if t.strip()]:
    name, sep, value = token.partition("=")
    if sep and name in keys:
      out[name] = value
      continue
    group = next((g for g, opts in groups.items() if token in opts), None)
    if group is not None:
      if group in seen:
        raise ValueError(f"configs/{config}.py: {token!r} and "
                         f"{out[group]!r} are both {group} options; give one")
      seen.add(group)
      out[group] = token
    elif token in flags:
      out[token] = True
    else:
      accepted = [f"{g} ({'|'.join(o)})" for g, o in groups.items()]
      accepted += list(flags) + [f"{k}=..." for k in keys]
      raise ValueError(f"configs/{config}.py: unknown argument {token!r}; "
                       f"accepted: {', '.join(accepted) or 'none'}")
  return out
