"""Result files: atomic writes, the self-describing ``.npz`` format, and provenance hashes."""

from diagnostics.results.io import FORMAT_PREFIX, atomic_write, load_npz, save_npz
from diagnostics.results.provenance import check_same_source, data_hash, parameter_hash

__all__ = [
    "FORMAT_PREFIX",
    "atomic_write",
    "check_same_source",
    "data_hash",
    "load_npz",
    "parameter_hash",
    "save_npz",
]
