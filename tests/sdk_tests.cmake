# SDK tests that are compiler runs and builds, not GoogleTest binaries.
# Included from tests/CMakeLists.txt.
set(sdk_include_dir ${PROJECT_SOURCE_DIR}/sdk/include)

# plugin.h is strict C11 and plugin.hpp strict C++17, whatever bosun uses.
add_test(NAME sdk_header_is_c11
  COMMAND ${CMAKE_C_COMPILER} -std=c11 -Wall -Wextra -Werror -pedantic -fsyntax-only
    -I${sdk_include_dir} -x c ${sdk_include_dir}/bosun/plugin.h)
add_test(NAME sdk_header_is_cxx17
  COMMAND ${CMAKE_CXX_COMPILER} -std=c++17 -Wall -Wextra -Werror -pedantic -fsyntax-only
    -I${sdk_include_dir} -x c++ ${sdk_include_dir}/bosun/plugin.hpp)

# `cmake --install` the whole project into a fresh prefix (binary, modules,
# SDK, example config, systemd unit: tests/packaging_test.cpp checks the
# layout), then build examples/hello against that prefix only, as a third
# party would. Tests needing hello.so require the fixture "hello_module" and
# find it at ${BOSUN_HELLO_DIR_1_0_0}/hello.so (and _1_1_0); tests needing
# the prefix find it at ${BOSUN_INSTALL_PREFIX}.
set(sdk_prefix ${CMAKE_CURRENT_BINARY_DIR}/install-prefix)
set(BOSUN_INSTALL_PREFIX ${sdk_prefix})
add_test(NAME install_prefix
  COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${PROJECT_BINARY_DIR} -DPREFIX=${sdk_prefix}
    -P ${CMAKE_CURRENT_SOURCE_DIR}/install_prefix.cmake)
set_tests_properties(install_prefix PROPERTIES FIXTURES_SETUP sdk_prefix)

set(hello_cxx_flags "")
if(BOSUN_SANITIZE)
  # The module must carry the same runtime as the host that loads it.
  string(JOIN " " hello_cxx_flags ${bosun_sanitizers})
endif()

foreach(version 1.0.0 1.1.0)
  string(REPLACE "." "_" tag ${version})
  set(hello_dir ${CMAKE_CURRENT_BINARY_DIR}/hello-${version})
  set(BOSUN_HELLO_DIR_${tag} ${hello_dir})
  add_test(NAME hello_build_${tag}
    COMMAND ${CMAKE_CTEST_COMMAND}
      --build-and-test ${PROJECT_SOURCE_DIR}/examples/hello ${hello_dir}
      --build-generator ${CMAKE_GENERATOR}
      --build-makeprogram ${CMAKE_MAKE_PROGRAM}
      --build-noclean
      --build-options
        -DCMAKE_PREFIX_PATH=${sdk_prefix}
        -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
        -DCMAKE_FIND_USE_CMAKE_SYSTEM_PATH=OFF
        -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}
        -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE}
        -DCMAKE_CXX_FLAGS=${hello_cxx_flags}
        -DHELLO_VERSION=${version})
  set_tests_properties(hello_build_${tag} PROPERTIES
    FIXTURES_REQUIRED sdk_prefix FIXTURES_SETUP hello_module TIMEOUT 300)
endforeach()
