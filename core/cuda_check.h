// SY_CUDA(call) and SY_CUBLAS(call): check a CUDA runtime or cuBLAS status and raise sy::Error
// naming the call, file, line and rank. SY_CUDA_LAUNCH() checks the last kernel launch.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/check.h"

namespace sy::detail {
const char* cublas_status_name(cublasStatus_t status);
}

#define SY_CUDA(call)                                                                                     \
  do {                                                                                                    \
    cudaError_t sy_status_ = (call);                                                                      \
    if (sy_status_ != cudaSuccess)                                                                        \
      SY_FAIL_AS(::sy::ErrorKind::cuda) << #call << " failed: " << cudaGetErrorString(sy_status_) << " (" \
                                        << cudaGetErrorName(sy_status_) << ")";                           \
  } while (0)

#define SY_CUDA_LAUNCH() SY_CUDA(cudaGetLastError())

#define SY_CUBLAS(call)                                                                            \
  do {                                                                                             \
    cublasStatus_t sy_status_ = (call);                                                            \
    if (sy_status_ != CUBLAS_STATUS_SUCCESS)                                                       \
      SY_FAIL_AS(::sy::ErrorKind::cublas) << #call << " failed: " << ::sy::detail::cublas_status_name(sy_status_); \
  } while (0)
