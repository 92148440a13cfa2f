"""Print the requirements of mlcd's extras, one a line, for an image's dependency layer.

Run inside a Dockerfile before the code is copied, so that the dependency layer depends on pyproject.toml and
requirements.txt alone and a code change rebuilds only the last layer:

    python3 requirements_for.py pyproject.toml serving,s3 > /tmp/reqs.txt
    pip install -c requirements.txt -r /tmp/reqs.txt

The project's own dependencies come first, then each extra's (an extra naming ``mlcd[other]`` is expanded).
``--base-provides tensorflow=tensorflow,tensorflow-cpu`` leaves those distributions out when the interpreter can
already import ``tensorflow``: the TensorFlow base image brings its own (GPU) build, which a pip ``tensorflow-cpu``
installed on top would shadow.
Standard library only (tomllib): the image has nothing else at that point.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import util
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def provided(spec: str) -> set[str]:
    """``module=dist,dist;module2=dist3``: the distributions to leave out, for each module the base can import."""
    out: set[str] = set()
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        module, _, dists = item.partition("=")
        if util.find_spec(module.strip()) is not None:
            out.update(_canonical(d) for d in dists.split(",") if d.strip())
    return out


def requirements(pyproject: Path, extras: list[str], skip: set[str]) -> list[str]:
    """The project's dependencies plus those of ``extras``, expanded and de-duplicated, in order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    own = _canonical(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = []
    seen_extras: set[str] = set()

    def add(reqs: list[str]) -> None:
        for req in reqs:
            match = _NAME.match(req)
            if match is None:
                raise SystemExit(f"requirements_for: cannot read requirement {req!r}")
            name = _canonical(match.group(1))
            if name == own:  # mlcd[a,b]: another extra of this project
                for extra in (match.group(2) or "[]").strip("[]").split(","):
                    expand(extra.strip())
                continue
            if name in skip:
                continue
            if req not in out:
                out.append(req)

    def expand(extra: str) -> None:
        if not extra or extra in seen_extras:
            return
        if extra not in optional:
            raise SystemExit(f"requirements_for: pyproject.toml has no extra {extra!r} (has: {', '.join(optional)})")
        seen_extras.add(extra)
        add(optional[extra])

    add(list(project.get("dependencies", [])))
    for extra in extras:
        expand(extra)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", help="comma-separated extras, e.g. serving,s3")
    parser.add_argument("--base-provides", default="",
                        help="module=dist,dist (';' between entries): leave the dists out when the module imports")
    args = parser.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    skip = provided(args.base_provides)
    for name in sorted(skip):
        print(f"requirements_for: {name} left out: the base image provides it", file=sys.stderr)
    sys.stdout.write("".join(f"{req}\n" for req in requirements(args.pyproject, extras, skip)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
