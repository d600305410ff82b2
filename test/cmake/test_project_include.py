"""cmake/project_include.cmake works as CMAKE_PROJECT_INCLUDE as it is (the README recipe):
a project importing a target with a build-machine include path configures and generates,
and the target keeps its include paths that exist. The function file alone does not."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MISSING = "/opt/python/cp311-cp311/include/python3.11-not-here"

PROJECT = f"""cmake_minimum_required(VERSION 3.19)
project(probe C)
# what find_package() of a wheel's interface package does: an imported target whose
# include dirs name the wheel's build machine
add_library(wheel::target INTERFACE IMPORTED)
set_target_properties(wheel::target PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "{MISSING};${{CMAKE_CURRENT_SOURCE_DIR}}/include")
add_library(probe STATIC probe.c)
target_link_libraries(probe PRIVATE wheel::target)
file(GENERATE OUTPUT "${{CMAKE_BINARY_DIR}}/dirs.txt"
     CONTENT "$<TARGET_PROPERTY:wheel::target,INTERFACE_INCLUDE_DIRECTORIES>")
"""


@pytest.fixture
def project(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    source = tmp_path / "src"
    (source / "include").mkdir(parents=True)
    (source / "CMakeLists.txt").write_text(PROJECT)
    (source / "probe.c").write_text("int probe(void) { return 0; }\n")
    return source


def configure(source: Path, build: Path, include: Path):
    return subprocess.run(["cmake", "-S", str(source), "-B", str(build),
                           f"-DCMAKE_PROJECT_INCLUDE={include}"],
                          capture_output=True, text=True, timeout=120)


def test_project_include_drops_missing_include_dirs(project, tmp_path):
    done = configure(project, tmp_path / "build", REPO / "cmake" / "project_include.cmake")
    assert done.returncode == 0, done.stdout + done.stderr
    dirs = (tmp_path / "build" / "dirs.txt").read_text().split(";")
    assert dirs == [str(project / "include")]  # the existing path is kept, the other gone


def test_the_function_file_alone_is_not_enough(project, tmp_path):
    """The README's earlier recipe passed this file: CMake then refuses the imported target."""
    done = configure(project, tmp_path / "build", REPO / "cmake" / "drop_missing_include_dirs.cmake")
    assert done.returncode != 0
    assert "non-existent path" in done.stderr and MISSING in done.stderr
