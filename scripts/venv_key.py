"""Print the cache key of the virtualenv: a hash of the dependency list and the interpreter.

Only the dependency lists in pyproject.toml count, so editing code or docs never rebuilds the
(6 GB) environment, while any change of a dependency does.
"""
import hashlib
import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml").read_text())["project"]
parts = [f"{sys.version_info.major}.{sys.version_info.minor}"]
parts += sorted(project.get("dependencies", []))
for extra, deps in sorted(project.get("optional-dependencies", {}).items()):
    parts += [f"[{extra}]"] + sorted(deps)
print(hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16])
