"""Shared entry-point wrapper: user errors print one clear line (no traceback) and exit with status 2."""
from __future__ import annotations

import sys

from desra.errors import UserError


def run_cli(main, argv=None) -> None:
    try:
        main(argv)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
