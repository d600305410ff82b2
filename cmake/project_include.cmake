# A CMAKE_PROJECT_INCLUDE file, usable as is, for building a ROS 2 interface package (such
# as composition_interfaces, which launch_ros needs) against the ROS 2 PyPI wheels:
#   cmake -S <package> -B <build> ... -DCMAKE_PROJECT_INCLUDE=<repo>/cmake/project_include.cmake
# The wheels' imported targets name include paths of their build machine
# (/opt/python/cp311-cp311/...); drop_missing_include_dirs.cmake removes those. CMake
# includes this file inside project(), before the package's find_package() calls have
# imported anything, so the clean-up is deferred to the end of the top directory.
# Needs CMake >= 3.19 (cmake_language(DEFER)). On a real ROS install it changes nothing.
include_guard(GLOBAL)
include("${CMAKE_CURRENT_LIST_DIR}/drop_missing_include_dirs.cmake")
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL dispider_drop_missing_include_dirs)
