"""Shared entry-point wrapper: user errors print one clear line (no traceback) and exit with status 2.

The entry points parse and check their options before importing torch, so ``--help`` and option errors come
back at once; torch is imported only when the work starts.
"""
from __future__ import annotations

import argparse
import sys

from desra.errors import ConfigError, UserError


def user_message(e: UserError) -> str:
    """The error's own message, also when a DataLoader worker wrapped it with the worker's traceback."""
    msg = str(e)
    if 'Original Traceback' in msg:
        last = msg.strip().splitlines()[-1]  # "desra.errors.DataError: <message>"
        msg = last.split(': ', 1)[1] if ': ' in last else last
    return msg


def script_parser(doc: str, **kwargs) -> argparse.ArgumentParser:
    """The argument parser of a script whose docstring is ``doc``: its first paragraph is the description, the
    rest (usage lines, notes) the epilog, printed by ``--help`` as written."""
    head, _, rest = doc.strip('\n').partition('\n\n')
    return argparse.ArgumentParser(description=head, epilog=rest or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def label_pairs(values, flag: str, what: str = 'PATH') -> dict:
    """``['A=x', 'B=y']`` -> ``{'A': 'x', 'B': 'y'}`` for a ``LABEL=<what>`` option; ConfigError naming ``flag``
    for an item without ``=``, an empty side, or a label given twice."""
    out = {}
    for v in values or []:
        label, sep, path = v.partition('=')
        if not sep or not label.strip() or not path.strip():
            raise ConfigError(f'{flag} {v!r}: expected LABEL={what}')
        if label.strip() in out:
            raise ConfigError(f'{flag}: label {label.strip()!r} given twice')
        out[label.strip()] = path.strip()
    return out


def run_cli(main, argv=None) -> None:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 must not crash a log line
        try:
            stream.reconfigure(errors='backslashreplace')
        except (AttributeError, ValueError):
            pass
    try:
        main(argv)
    except UserError as e:
        print(f'error: {user_message(e)}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    finally:
        if 'torch' in sys.modules:  # never import torch just to tear down
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
