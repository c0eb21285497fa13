"""Ships the zoo spec and the suites inside the wheel.

The repository keeps one copy of each at the top level (`models/zoo.toml`, `attacks/*.toml`),
where users and reviewers read them; a wheel built from it carries them as package data under
`robustbench_sparse/shipped/`, where `runtime.SHIPPED` finds them once installed.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("models/zoo.toml", "attacks/*.toml")


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "robustbench_sparse" / "shipped"
        for pattern in SHIPPED:
            for source in sorted(root.glob(pattern)):
                destination = target / source.relative_to(root)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildWithShippedFiles})
