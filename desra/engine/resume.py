"""Choosing the training state to resume from, and checking it before anything is loaded.

Every ``training_states/<iter>.state`` records the size and SHA-256 of the network files saved with it
(``files``: ``{'net_g_<iter>.pth': {'size', 'sha256'}, ...}``). ``--auto_resume`` walks the states from the
newest down and takes the first intact one:

* a state file that cannot be read (truncated by a crash or a full disk) is skipped;
* a network file that is missing, shorter than recorded or unreadable is skipped (the state with it);
* a network file that reads fine but whose content differs from the recorded hash was *replaced* after the
  state was written (an older checkpoint copied over it): that is refused, naming the file, because
  resuming would silently train on other weights than the optimiser state belongs to.

Every skipped state is named with the reason. States written before hashes were recorded are accepted when
their network files can be read.
"""
from __future__ import annotations

import logging
import os

from desra.engine.checkpoint import list_training_states
from desra.errors import CheckpointError
from desra.utils.fingerprint import file_sha256

logger = logging.getLogger('desra')


def _readable(path: str) -> str | None:
    """None if ``path`` loads as a checkpoint, else why not."""
    from desra.archs.checkpoint_io import read_checkpoint

    try:
        read_checkpoint(path)
        return None
    except CheckpointError as e:
        return str(e).split(': ', 1)[-1]


def verify_training_state(state_path: str, models_dir: str) -> tuple[dict | None, str | None]:
    """Read ``state_path`` and check its network files.

    Returns ``(state, None)`` when intact, ``(None, reason)`` when the state should be skipped.

    Raises:
        CheckpointError: a network file was replaced by another, complete checkpoint (see the module notes).
    """
    from desra.archs.checkpoint_io import read_checkpoint

    name = os.path.basename(state_path)
    try:
        state = read_checkpoint(state_path)
    except CheckpointError as e:
        return None, f"{name} cannot be read ({str(e).split(': ', 1)[-1]})"
    if 'iter' not in state:
        return None, f"{name} is not a training state (no 'iter' entry)"
    files = state.get('files')
    if files is None:  # written before network hashes were recorded
        it = int(state['iter'])
        names = [f'net_g_{it}.pth'] + ([f'net_d_{it}.pth'] if os.path.isfile(os.path.join(models_dir,
                                                                                            f'net_d_{it}.pth')) else [])
        for fname in names:
            p = os.path.join(models_dir, fname)
            if not os.path.isfile(p):
                return None, f'{fname} (saved with {name}) is missing'
            why = _readable(p)
            if why:
                return None, f'{fname} (saved with {name}) cannot be read: {why}'
        return state, None
    for fname, info in files.items():
        p = os.path.join(models_dir, fname)
        if not os.path.isfile(p):
            return None, f'{fname} (saved with {name}) is missing'
        size = os.path.getsize(p)
        if size == info.get('size') and file_sha256(p) == info.get('sha256'):
            continue
        why = _readable(p)
        if why or size < info.get('size', 0):
            return None, (f'{fname} (saved with {name}) is truncated or corrupt: {size:,} of {info.get("size", 0):,} '
                          f'bytes' + (f', {why}' if why else ''))
        raise CheckpointError(
            f"resume: {p} is not the file saved with {state_path}: it is a complete checkpoint but its SHA-256 "
            f"differs from the one recorded at iteration {state['iter']} (it was replaced afterwards). Put the "
            f"original file back, or delete {state_path} to resume from an earlier state")
    return state, None


def find_resume_state(state_dir: str, models_dir: str) -> tuple[str | None, dict | None, list[str]]:
    """The newest intact training state: ``(path, state, skipped reasons)``; ``(None, None, [])`` if there are none.

    Raises:
        CheckpointError: states exist but none is intact (each one's reason is listed), or a network file
            was replaced (:func:`verify_training_state`).
    """
    skipped = []
    iters = list_training_states(state_dir)
    for it in reversed(iters):
        path = os.path.join(state_dir, f'{it}.state')
        state, why = verify_training_state(path, models_dir)
        if state is not None:
            return path, state, skipped
        skipped.append(why)
    if iters:
        raise CheckpointError(f"--auto_resume: no intact training state in {state_dir}: " + '; '.join(skipped)
                              + ". Delete the damaged files to start over, or restore them")
    return None, None, skipped
