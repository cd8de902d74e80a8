# The installed component (`cmake --install build --prefix P`):
#   liblongattn.so      core, CPU (and CUDA) kernels, strategies, Plan and Context, the C interface
#   liblongattn_mpi.so  the MPI communicator and its watchdog, la_context_create_mpi
#   liblongattn_nccl.so the NCCL communicator and la_context_create_nccl, where built
# their headers (longattn.h, longattn_mpi.h; longattn/*.hpp, longattn/comm/...), a CMake package
# (find_package(longattn CONFIG): longattn::longattn, longattn::mpi, longattn::nccl) and pkg-config
# files (longattn, longattn-mpi). The shared libraries are made of the static libraries' objects, so
# nothing of this build's own usage requirements (the ISA flags, -Werror, the include roots under
# build/roots/) reaches a consumer.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

find_path(LONGATTN_DLPACK_INCLUDE_DIR dlpack/dlpack.h)
if(NOT LONGATTN_DLPACK_INCLUDE_DIR)
  message(FATAL_ERROR "dlpack/dlpack.h not found: install libdlpack-dev (scripts/setup.sh does)")
endif()

# The static libraries whose objects make the shared ones are position independent.
foreach(t longattn_core longattn_kernels_cpu longattn_tile_plan longattn_kernels longattn_strategies
          longattn_kernels_cuda longattn_kernels_cuda_obj longattn_comm_mpi longattn_comm_nccl)
  if(TARGET ${t})
    set_target_properties(${t} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  endif()
endforeach()

# Objects of the static libraries, and what they need at link time.
set(la_objects $<TARGET_OBJECTS:longattn_core> $<TARGET_OBJECTS:longattn_kernels_cpu> $<TARGET_OBJECTS:longattn_tile_plan>
               $<TARGET_OBJECTS:longattn_kernels> $<TARGET_OBJECTS:longattn_strategies>)
if(TARGET longattn_kernels_cuda)
  list(APPEND la_objects $<TARGET_OBJECTS:longattn_kernels_cuda> $<TARGET_OBJECTS:longattn_kernels_cuda_obj>)
endif()
add_library(longattn SHARED src/capi/capi.cpp ${la_objects})
longattn_root(longattn PRIVATE capi ${PROJECT_SOURCE_DIR}/src/capi)
target_include_directories(longattn PRIVATE ${LONGATTN_DLPACK_INCLUDE_DIR}
                           $<TARGET_PROPERTY:longattn_strategies,INTERFACE_INCLUDE_DIRECTORIES>
                           INTERFACE $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_compile_features(longattn INTERFACE cxx_std_17)  # the C++ headers; the C header is C99
target_link_libraries(longattn PRIVATE OpenMP::OpenMP_CXX longattn_warnings)
if(TARGET longattn_kernels_cuda)
  # It links the CUDA objects: the same architectures and the one shared CUDA runtime.
  get_target_property(la_cuda_archs longattn_kernels_cuda_obj CUDA_ARCHITECTURES)
  set_target_properties(longattn PROPERTIES CUDA_ARCHITECTURES "${la_cuda_archs}" CUDA_RUNTIME_LIBRARY Shared)
  target_link_libraries(longattn PRIVATE CUDA::cudart)
endif()
set_target_properties(longattn PROPERTIES VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR} EXPORT_NAME longattn)
set(la_targets longattn)

if(LONGATTN_WITH_MPI)
  add_library(longattn_mpi SHARED src/capi/capi_mpi.cpp $<TARGET_OBJECTS:longattn_comm_mpi>)
  longattn_root(longattn_mpi PRIVATE capi ${PROJECT_SOURCE_DIR}/src/capi)
  target_include_directories(longattn_mpi PRIVATE ${LONGATTN_DLPACK_INCLUDE_DIR}
                             $<TARGET_PROPERTY:longattn_comm_mpi,INTERFACE_INCLUDE_DIRECTORIES>
                             $<TARGET_PROPERTY:longattn_strategies,INTERFACE_INCLUDE_DIRECTORIES>)
  target_link_libraries(longattn_mpi PUBLIC longattn MPI::MPI_C PRIVATE Threads::Threads longattn_warnings)
  target_compile_definitions(longattn_mpi PUBLIC OMPI_SKIP_MPICXX MPICH_SKIP_MPICXX)
  if(LONGATTN_CUDA_FOUND)
    target_link_libraries(longattn_mpi PRIVATE CUDA::cudart)
  endif()
  set_target_properties(longattn_mpi PROPERTIES VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
                        EXPORT_NAME mpi INSTALL_RPATH "$ORIGIN")
  list(APPEND la_targets longattn_mpi)
endif()
if(TARGET longattn_comm_nccl)
  add_library(longattn_nccl SHARED src/capi/capi_nccl.cpp $<TARGET_OBJECTS:longattn_comm_nccl>)
  longattn_root(longattn_nccl PRIVATE capi ${PROJECT_SOURCE_DIR}/src/capi)
  target_include_directories(longattn_nccl PRIVATE ${LONGATTN_DLPACK_INCLUDE_DIR}
                             $<TARGET_PROPERTY:longattn_comm_nccl,INTERFACE_INCLUDE_DIRECTORIES>
                             $<TARGET_PROPERTY:longattn_strategies,INTERFACE_INCLUDE_DIRECTORIES>)
  # Its header includes nccl.h and the CUDA runtime's.
  target_include_directories(longattn_nccl INTERFACE ${NCCL_INCLUDE_DIR})
  target_link_libraries(longattn_nccl PUBLIC longattn_mpi CUDA::cudart PRIVATE ${NCCL_LIBRARY} longattn_warnings)
  set_target_properties(longattn_nccl PROPERTIES VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
                        EXPORT_NAME nccl INSTALL_RPATH "$ORIGIN")
  list(APPEND la_targets longattn_nccl)
endif()

install(TARGETS ${la_targets} EXPORT longattnTargets LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES src/capi/longattn.h src/capi/longattn_mpi.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET longattn_nccl)
  install(FILES src/capi/longattn_nccl.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endif()
install(FILES src/longattn/distributed.hpp src/longattn/context.hpp src/longattn/cpu_isa.hpp src/longattn/pattern.hpp src/longattn/tensor.hpp
              src/longattn/dtype.hpp src/longattn/layout.hpp src/longattn/error.hpp
              ${PROJECT_BINARY_DIR}/generated/longattn/build_config.hpp
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/longattn)
install(FILES comm/communicator.hpp comm/self_communicator.hpp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/longattn/comm)
if(LONGATTN_WITH_MPI)
  install(FILES comm/mpi/mpi_communicator.hpp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/longattn/comm/mpi)
endif()
if(TARGET longattn_nccl)
  install(FILES comm/nccl/nccl_communicator.hpp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/longattn/comm/nccl)
endif()

set(la_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/longattn)
install(EXPORT longattnTargets NAMESPACE longattn:: DESTINATION ${la_cmake_dir})
configure_package_config_file(cmake/longattnConfig.cmake.in ${PROJECT_BINARY_DIR}/longattnConfig.cmake
                              INSTALL_DESTINATION ${la_cmake_dir})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/longattnConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/longattnConfig.cmake ${PROJECT_BINARY_DIR}/longattnConfigVersion.cmake
        DESTINATION ${la_cmake_dir})
# The .pc files find the prefix from where they lie (${pcfiledir}), so a moved prefix still works.
file(RELATIVE_PATH LA_PC_PREFIX /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
foreach(pc longattn longattn-mpi)
  if(pc STREQUAL "longattn" OR LONGATTN_WITH_MPI)
    configure_file(cmake/${pc}.pc.in ${PROJECT_BINARY_DIR}/${pc}.pc @ONLY)
    install(FILES ${PROJECT_BINARY_DIR}/${pc}.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
  endif()
endforeach()
