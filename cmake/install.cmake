# Install rules, the CMake package, the pkg-config file and the Debian package (CPack).
# Included by the top-level CMakeLists.txt when AD_INSTALL is on (the default when this
# is the top-level project). Layout under the prefix:
#   include/tape_autodiff/{autodiff,ops,nn}/*.hpp   (the targets add include/tape_autodiff)
#   lib/libtape_autodiff.a, lib/libtape_autodiff_nn.a   (.so.0.1.0 with BUILD_SHARED_LIBS)
#   lib/libtape_autodiff_distributed.a, include/tape_autodiff/nn/distributed.hpp   (AD_WITH_MPI)
#   lib/cmake/tape_autodiff/   tape_autodiffConfig.cmake, ...ConfigVersion.cmake,
#                              ...Targets.cmake, FindOpenBLAS.cmake,
#                              ...DistributedTargets.cmake (AD_WITH_MPI: the component
#                              "distributed", loaded only when a consumer asks for it)
#   lib/pkgconfig/tape_autodiff.pc
#   share/tape_autodiff/tools/gdb/ad_printers.py   (gdb: `directory <prefix>/share/tape_autodiff`)
#   share/doc/tape_autodiff/LICENSE
include(CMakePackageConfigHelpers)

set(AD_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/tape_autodiff)

install(TARGETS tape_autodiff tape_autodiff_nn EXPORT tape_autodiffTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/autodiff ${PROJECT_SOURCE_DIR}/ops ${PROJECT_SOURCE_DIR}/nn
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/tape_autodiff
  FILES_MATCHING PATTERN "*.hpp"
  PATTERN "file_io.hpp" EXCLUDE  # internal to nn/
  PATTERN "shape_checks.hpp" EXCLUDE  # internal to nn/
  PATTERN "distributed.hpp" EXCLUDE)  # with its library, below
install(EXPORT tape_autodiffTargets NAMESPACE tape_autodiff:: DESTINATION ${AD_CMAKE_DIR})
# nn/distributed (AD_WITH_MPI) in an export set of its own: its imported target links
# MPI::MPI_CXX, so the package config includes it (and finds MPI) only for a consumer
# that asks for the component: find_package(tape_autodiff COMPONENTS distributed).
if(TARGET tape_autodiff_distributed)
  install(TARGETS tape_autodiff_distributed EXPORT tape_autodiffDistributedTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  install(FILES ${PROJECT_SOURCE_DIR}/nn/distributed.hpp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/tape_autodiff/nn)
  install(EXPORT tape_autodiffDistributedTargets NAMESPACE tape_autodiff:: DESTINATION ${AD_CMAKE_DIR})
endif()
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/tape_autodiffConfig.cmake.in
  ${PROJECT_BINARY_DIR}/tape_autodiffConfig.cmake INSTALL_DESTINATION ${AD_CMAKE_DIR})
# 0.x: only the same minor version is compatible (find_package(tape_autodiff 0.1)).
write_basic_package_version_file(${PROJECT_BINARY_DIR}/tape_autodiffConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/tape_autodiffConfig.cmake
              ${PROJECT_BINARY_DIR}/tape_autodiffConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/FindOpenBLAS.cmake
        DESTINATION ${AD_CMAKE_DIR})

# pkg-config: the prefix is found from the .pc file's own place, so an unpacked or
# relocated tree works as well as the prefix it was configured for.
file(RELATIVE_PATH AD_PC_TO_PREFIX /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" AD_PC_TO_PREFIX "${AD_PC_TO_PREFIX}")
if(BUILD_SHARED_LIBS)
  set(AD_PC_REQUIRES_PRIVATE "zlib openblas")  # linked by our shared libraries themselves
else()
  set(AD_PC_REQUIRES "zlib openblas")          # a static link needs them too
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/tape_autodiff.pc.in ${PROJECT_BINARY_DIR}/tape_autodiff.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/tape_autodiff.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

install(FILES ${PROJECT_SOURCE_DIR}/tools/gdb/ad_printers.py
        DESTINATION ${CMAKE_INSTALL_DATADIR}/tape_autodiff/tools/gdb)
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE DESTINATION ${CMAKE_INSTALL_DOCDIR})

if(AD_NATIVE)
  # Compiled for this machine's CPU: say so wherever the result is installed.
  install(CODE "message(WARNING \"tape_autodiff was built with AD_NATIVE=ON (-march=native): the installed \"
                \"libraries may not run on another CPU. Configure with -DAD_NATIVE=OFF for a portable install \"
                \"(./run.sh package does).\")")
endif()

# --- Debian package: ./run.sh package (cpack -G DEB) ------------------------------
# One development package with the static libraries (or shared, with BUILD_SHARED_LIBS),
# the headers, the CMake package and the pkg-config file, installed under /usr. Depends
# are the Debian packages a consumer compiles and links against, with the versions
# this build was made with (xtensor and fmt change their ABI with each minor / major).
function(ad_deb_range out pkg version parts)
  string(REPLACE "." ";" v "${version}")
  list(GET v 0 major)
  list(GET v 1 minor)
  if(parts EQUAL 1)
    math(EXPR next "${major} + 1")
    set(${out} "${pkg} (>= ${major}.${minor}), ${pkg} (<< ${next})" PARENT_SCOPE)
  else()
    math(EXPR next "${minor} + 1")
    set(${out} "${pkg} (>= ${major}.${minor}), ${pkg} (<< ${major}.${next})" PARENT_SCOPE)
  endif()
endfunction()
ad_deb_range(AD_DEP_XTENSOR libxtensor-dev "${xtensor_VERSION}" 2)
ad_deb_range(AD_DEP_XTENSOR_BLAS libxtensor-blas-dev "${xtensor-blas_VERSION}" 2)
ad_deb_range(AD_DEP_FMT libfmt-dev "${fmt_VERSION}" 1)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME libtape-autodiff-dev)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_DESCRIPTION "tape-autodiff: a tape-based reverse-mode automatic differentiation engine
for CNNs (conv2d, pooling, activations, linear, losses, each with a hand-derived
VJP), a small nn library (layers, optimizers, training loop, checkpoints,
safetensors and .npy weights with PyTorch state_dict names) and gdb
pretty-printers. Static libraries, headers, CMake package
(find_package(tape_autodiff)) and pkg-config file.")
set(CPACK_PACKAGE_CONTACT "tape-autodiff maintainers <tape-autodiff@example.org>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "${AD_DEP_XTENSOR}, ${AD_DEP_XTENSOR_BLAS}, ${AD_DEP_FMT}, libopenblas-dev, zlib1g-dev, libgomp1")
if(TARGET tape_autodiff_distributed)
  # A package of a build with AD_WITH_MPI holds nn/distributed too (./run.sh package
  # builds without it).
  string(APPEND CPACK_DEBIAN_PACKAGE_DEPENDS ", libopenmpi-dev")
endif()
if(BUILD_SHARED_LIBS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)  # adds the runtime libraries' packages
endif()
include(CPack)
