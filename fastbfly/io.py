"""Saving and loading butterflies as versioned ``.npz`` files (no pickle)."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .butterfly import SUPPORTED_DTYPES, Butterfly, Factor
from .patterns import Pattern

__all__ = ["save", "load"]

FORMAT_NAME = "fastbfly.butterfly"
FORMAT_VERSION = 1


def save(path, butterfly: Butterfly) -> None:
    """Write ``butterfly`` to ``path`` (a ``.npz`` file without pickled objects).

    The file is written next to ``path`` under a temporary name and renamed into
    place, so an interrupted save never leaves a half-written file where a good one was.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; written as given (no ``.npz`` suffix is appended).
    butterfly : Butterfly

    Examples
    --------
    >>> import os, tempfile, fastbfly
    >>> B = fastbfly.hadamard_butterfly(8)
    >>> path = os.path.join(tempfile.mkdtemp(), "h8.npz")
    >>> fastbfly.save(path, B)
    >>> bool((fastbfly.load(path).toarray() == B.toarray()).all())
    True
    """
    if not isinstance(butterfly, Butterfly):
        raise TypeError(f"save expects a Butterfly, got {type(butterfly).__name__}")
    path = os.fspath(path)
    arrays = {
        "format": np.array(FORMAT_NAME),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "patterns": butterfly._patterns,
        "values": butterfly._values,
    }
    if butterfly.perm is not None:
        arrays["perm"] = butterfly.perm
    if butterfly.row_perm is not None:
        arrays["row_perm"] = butterfly.row_perm
    if butterfly.shape != butterfly.chain.shape:
        arrays["shape"] = np.array(butterfly.shape, dtype=np.int64)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".fastbfly-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load(path) -> Butterfly:
    """Read a `Butterfly` written by :func:`save`.

    The file is read with ``allow_pickle=False`` and every array is checked before the
    `Butterfly` is built, so a foreign or damaged file gives a ``ValueError``, never
    wrong products.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save`.

    Returns
    -------
    Butterfly
        With the saved factors, permutations and shape (``info`` is not saved).

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError
        As :func:`open` does.
    ValueError
        If the file is not a fastbfly file, has an unsupported version, is truncated or
        corrupted, its patterns, values and permutations do not agree, or its values
        hold NaN or Inf.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, fastbfly
    >>> folder = tempfile.mkdtemp()
    >>> B = fastbfly.dft_butterfly(16)
    >>> fastbfly.save(os.path.join(folder, "dft16.npz"), B)
    >>> C = fastbfly.load(os.path.join(folder, "dft16.npz"))
    >>> C
    <Butterfly 16x16 dtype=complex128 factors=4 nnz=128 perm=yes>
    >>> bool(np.array_equal(C @ np.arange(16.0), B @ np.arange(16.0)))
    True
    >>> np.save(os.path.join(folder, "plain.npy"), np.eye(4))
    >>> fastbfly.load(os.path.join(folder, "plain.npy"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...plain.npy is not a fastbfly file: a plain .npy array, not an .npz archive
    """
    try:
        data = np.load(os.fspath(path), allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as error:  # any parse failure of a foreign or damaged file
        raise ValueError(f"{path!s} is not a readable fastbfly file: {error!r}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!s} is not a fastbfly file: a plain .npy array, not an .npz archive")
    try:
        with data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # truncated or corrupted members (zlib, zip, format errors)
        raise ValueError(f"{path!s} is not a readable fastbfly file: {error!r}") from None
    for key, array in arrays.items():
        # np.load hands members that are not .npy files back as raw bytes
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{path!s} is not a fastbfly file: member {key!r} is not a .npy array")
    for key in ("format", "version", "patterns", "values"):
        if key not in arrays:
            raise ValueError(f"{path!s} is not a fastbfly file: missing {key!r}")
    if arrays["format"].shape != () or str(arrays["format"]) != FORMAT_NAME:
        raise ValueError(f"{path!s} is not a fastbfly file (format {arrays['format']!r})")
    version = arrays["version"]
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
        raise ValueError(f"{path!s}: unsupported format version {version!r}, expected {FORMAT_VERSION}")
    patterns, values = arrays["patterns"], arrays["values"]
    if patterns.ndim != 2 or patterns.shape[1] != 4 or patterns.shape[0] < 1 or patterns.dtype.kind not in "iu":
        raise ValueError(f"{path!s}: malformed patterns array of shape {patterns.shape}, dtype {patterns.dtype}")
    if values.ndim != 1 or values.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{path!s}: malformed values array of shape {values.shape}, dtype {values.dtype}")
    try:
        pattern_list = [Pattern.of(tuple(int(v) for v in row)) for row in patterns]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path!s}: invalid pattern: {error}") from None
    sizes = [p.nnz for p in pattern_list]
    if sum(sizes) != values.size:
        raise ValueError(
            f"{path!s}: patterns need {sum(sizes)} values but the file holds {values.size}"
        )
    offsets = np.cumsum([0] + sizes)
    shape = arrays.get("shape")
    if shape is not None:
        if shape.shape != (2,) or shape.dtype.kind not in "iu":
            raise ValueError(f"{path!s}: malformed shape array {shape!r}")
        shape = tuple(int(s) for s in shape)
    try:
        factors = [
            Factor(p, values[start:stop].reshape(tuple(p)))
            for p, start, stop in zip(pattern_list, offsets[:-1], offsets[1:])
        ]
        return Butterfly(factors, perm=arrays.get("perm"), row_perm=arrays.get("row_perm"), shape=shape)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path!s}: inconsistent contents: {error}") from None
