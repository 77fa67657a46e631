"""Small torch-free helpers: folder locks, fingerprints, progress reporting, image headers.

Nothing here imports torch, so command-line entry points can validate their input and refuse bad files
before paying for a torch import.
"""
