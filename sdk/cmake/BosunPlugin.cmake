# bosun_add_plugin(<target> [OUTPUT_NAME <name>] SOURCES <src>...)
#
# Builds a bosun module the way the host expects it: a MODULE library named
# <name>.so (no "lib" prefix; <name> defaults to <target> and must equal the
# plugin's own name), hidden visibility so that only bosun_plugin_entry is
# exported, -fno-gnu-unique so the module can really be unloaded, and
# --no-undefined so a missing symbol fails the build, not the load.
# The same function builds bosun's own modules and third-party ones.
function(bosun_add_plugin target)
  cmake_parse_arguments(ARG "" "OUTPUT_NAME" "SOURCES" ${ARGN})
  if(NOT ARG_SOURCES)
    set(ARG_SOURCES ${ARG_UNPARSED_ARGUMENTS})
  endif()
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "bosun_add_plugin(${target}): no SOURCES given")
  endif()
  if(NOT ARG_OUTPUT_NAME)
    set(ARG_OUTPUT_NAME ${target})
  endif()
  add_library(${target} MODULE ${ARG_SOURCES})
  target_link_libraries(${target} PRIVATE bosun::sdk)
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    OUTPUT_NAME ${ARG_OUTPUT_NAME}
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(NOT DEFINED CMAKE_CXX_STANDARD)
    target_compile_features(${target} PRIVATE cxx_std_17)
  endif()
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANG_AND_ID:CXX,GNU>:-fno-gnu-unique>)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    # Export bosun_plugin_entry and nothing else, not even the C++ runtime's
    # weak symbols, so two versions of a module never bind to each other.
    set(map_file ${CMAKE_CURRENT_BINARY_DIR}/${target}.exports.map)
    file(WRITE ${map_file} "{ global: bosun_plugin_entry; local: *; };\n")
    target_link_options(${target} PRIVATE "LINKER:--no-undefined" "LINKER:--version-script=${map_file}")
    set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS ${map_file})
  endif()
  if(BOSUN_PLUGIN_OUTPUT_DIRECTORY)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${BOSUN_PLUGIN_OUTPUT_DIRECTORY})
  endif()
endfunction()
