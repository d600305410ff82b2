"""pip front end for the ament_cmake package (route B: no ROS install).

CMakeLists.txt stays the one build definition: this file runs its configure, build and
install with the current interpreter's prefix as the ament prefix, then packs the
installed tree into the wheel (the Python package into site-packages, everything else
- executables under lib/dispider_ros, share/, the message libraries - as data at the
prefix root), so `pip install .` and `pip uninstall dispider_ros` track every file.
"""
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
_PACKAGE_XML = ElementTree.parse(ROOT / "package.xml").getroot()
NAME = _PACKAGE_XML.findtext("name")
VERSION = _PACKAGE_XML.findtext("version")
DATA_FILES: list = []  # filled by the build; install_data reads this same list later


def _cmake_env(prefix: Path) -> dict:
    env = dict(os.environ)
    # pip's build isolation hides the venv's ROS wheels (ament_package, rosidl) from CMake.
    for key in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME"):
        env.pop(key, None)
    for key in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
        paths = [p for p in env.get(key, "").split(os.pathsep) if p]
        env[key] = os.pathsep.join([str(prefix)] + [p for p in paths if p != str(prefix)])
    return env


class BinaryDistribution(Distribution):
    """The wheel holds compiled message libraries: make it platform-specific."""

    def has_ext_modules(self):
        return True


class CMakeBuild(build_ext):
    """Runs CMakeLists.txt and stages its install tree for the wheel."""

    def run(self):
        prefix = Path(sys.prefix)
        build_dir = ROOT / "build" / "cmake"
        stage = ROOT / "build" / "stage"
        shutil.rmtree(stage, ignore_errors=True)
        env = _cmake_env(prefix)
        subprocess.check_call([
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_INSTALL_PREFIX={prefix}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DBUILD_TESTING=OFF", "-DCMAKE_BUILD_TYPE=Release",
        ], env=env)
        subprocess.check_call(
            ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 1)], env=env)
        subprocess.check_call(
            ["cmake", "--install", str(build_dir)], env={**env, "DESTDIR": str(stage)})
        self._pack(stage / prefix.relative_to(prefix.anchor))

    def _pack(self, staged_prefix: Path):
        package_dirs = list(staged_prefix.glob(f"lib/python*/*-packages/{NAME}"))
        if len(package_dirs) != 1:
            raise RuntimeError(f"expected one staged Python package, found {package_dirs}")
        site_dir = package_dirs[0].parent
        target = Path(self.build_lib) / NAME
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(package_dirs[0], target)
        for path in sorted(staged_prefix.rglob("*")):
            if path.is_dir() or site_dir in path.parents:
                continue
            rel_dir = str(path.parent.relative_to(staged_prefix))
            DATA_FILES.append((rel_dir, [str(path)]))


setup(
    name=NAME,
    version=VERSION,
    description=_PACKAGE_XML.findtext("description").strip().split("\n")[0],
    license=_PACKAGE_XML.findtext("license"),
    python_requires=">=3.10",
    packages=[],
    distclass=BinaryDistribution,
    cmdclass={"build_ext": CMakeBuild},
    data_files=DATA_FILES,
    entry_points={"console_scripts": ["dispider-eval = dispider_ros.eval.cli:main"]},
    zip_safe=False,
)
