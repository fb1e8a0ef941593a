"""testbed: ablation studies of AlexNet from switchable plugin components."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("testbed")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

from testbed.hookspecs import hookimpl  # noqa: E402  (what plugin authors import)

__all__ = ["__version__", "hookimpl"]
