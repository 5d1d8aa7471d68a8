from importlib.resources import files
from pathlib import Path


def config_path(*parts: str) -> Path:
    """The path of a file or folder of this package's data, e.g.
    ``config_path("templates", "rating.json")``.

    The registry resolves template and adapter paths relative to the folder it was read
    from, so callers need a real directory, not only a readable resource: pip installs
    wheels unpacked, and an editable install points at the source tree, so the package's
    root is always a directory on disk.
    """
    root = files(__name__)
    if not isinstance(root, Path):
        raise RuntimeError(f"{__name__} is not installed as files on disk ({root!r})")
    return root.joinpath(*parts)
