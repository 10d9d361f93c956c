"""Build hook: wheels carry the top-level hardware-profiles/ as package data.

The repository keeps one copy of each profile in hardware-profiles/ (where
people look for them); a non-editable install finds them in
edgeshrink/data/hardware-profiles/ (see edgeshrink.profiles).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithProfiles(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).parent / "hardware-profiles"
        target = Path(self.build_lib) / "edgeshrink" / "data" / "hardware-profiles"
        target.mkdir(parents=True, exist_ok=True)
        for profile in sorted(source.glob("*.toml")):
            shutil.copy2(profile, target / profile.name)


setup(cmdclass={"build_py": BuildWithProfiles})
