"""URI → ``pyarrow.fs`` filesystem: a local path, ``file://`` or ``s3://bucket/prefix``.

S3 goes through s3fs (wrapped for pyarrow) so the same code reaches AWS S3, MinIO or a
moto server. Credentials come only from the environment (``AWS_ACCESS_KEY_ID`` …, an
instance profile, IRSA); the endpoint from ``storage.endpoint_url`` or
``RAYDD_S3_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from raydd.errors import RayddError


class StorageError(RayddError, RuntimeError):
    """A storage location cannot be used (unreachable bucket, missing path, ...)."""


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path on it; ``uri`` is how users and logs name it."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts), "/".join([self.uri.rstrip("/"), *parts]))

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write_bytes_atomic(self, data: bytes) -> None:
        """Write to a temporary name, then move into place: readers never see a partial file."""
        parent = posixpath.dirname(self.path)
        self.fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(self.path)}")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self.path)


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    return endpoint_url or os.environ.get("RAYDD_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None


def resolve(uri: str, endpoint_url: str | None = None) -> Location:
    """Return the filesystem and path for ``uri``."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = os.path.abspath(parsed.path if parsed.scheme == "file" else uri)
        return Location(pafs.LocalFileSystem(), path, path)
    if parsed.scheme == "s3":
        import s3fs
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        endpoint = s3_endpoint(endpoint_url)
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {},
                               config_kwargs={"retries": {"max_attempts": 3}, "connect_timeout": 5, "read_timeout": 30},
                               use_listings_cache=False)
        path = f"{parsed.netloc}{parsed.path}".rstrip("/")
        return Location(PyFileSystem(FSSpecHandler(fs)), path, uri.rstrip("/"))
    raise StorageError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/prefix")


def check_reachable(loc: Location) -> None:
    """Fail fast, before any expensive work, when the location's bucket or root cannot be used."""
    root = loc.path.split("/", 1)[0] if not isinstance(loc.fs, pafs.LocalFileSystem) else None
    try:
        if root is None:
            loc.fs.create_dir(loc.path, recursive=True)
        elif loc.fs.get_file_info(root).type == pafs.FileType.NotFound:
            raise StorageError(f"bucket {root!r} of {loc.uri} does not exist")
    except StorageError:
        raise
    except Exception as e:  # network, credentials, permissions
        raise StorageError(f"storage {loc.uri} is unreachable: {type(e).__name__}: {e}") from e
