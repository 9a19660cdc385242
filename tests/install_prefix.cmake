# cmake -DBUILD_DIR=<build> -DPREFIX=<prefix> -P install_prefix.cmake
# Installs the project into an emptied prefix, so nothing of an earlier
# install (a module since removed) can make the layout test pass.
file(REMOVE_RECURSE "${PREFIX}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}"
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed: ${result}")
endif()
