# FindOpenBLAS: the OpenBLAS library, as the imported target OpenBLAS::OpenBLAS.
#
# Debian's OpenBLASConfig.cmake (libopenblas-pthread-dev only) sets variables but no
# target, and FindBLAS keeps one BLAS::BLAS for whichever vendor was asked first (the
# xtensor-blas package asks for any). This module finds libopenblas itself; it is
# installed next to tape_autodiffConfig.cmake, which finds it with
# find_dependency(OpenBLAS MODULE).
#
# Result: OpenBLAS_FOUND, OpenBLAS_LIBRARY (cache), the target OpenBLAS::OpenBLAS.
find_library(OpenBLAS_LIBRARY NAMES openblas DOC "The OpenBLAS library")
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OpenBLAS REQUIRED_VARS OpenBLAS_LIBRARY)
mark_as_advanced(OpenBLAS_LIBRARY)
if(OpenBLAS_FOUND AND NOT TARGET OpenBLAS::OpenBLAS)
  add_library(OpenBLAS::OpenBLAS UNKNOWN IMPORTED)
  set_target_properties(OpenBLAS::OpenBLAS PROPERTIES IMPORTED_LOCATION "${OpenBLAS_LIBRARY}")
endif()
