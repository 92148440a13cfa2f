"""``python -m mlcd.serving --port P``: the gateway container's entrypoint (same as ``mlcd serve``)."""

from __future__ import annotations

from mlcd.cli.serving import serve_command

if __name__ == "__main__":
    serve_command(prog_name="python -m mlcd.serving")
