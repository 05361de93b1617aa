// Shared pieces of the CUDA kernels: the stream cast, element loads/stores in fp32, grid sizes
// and warp/block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/cuda_check.h"
#include "core/ops/cuda_ops.h"

namespace sy::cuda {

inline cudaStream_t to_cuda(StreamRef stream) { return static_cast<cudaStream_t>(stream.handle); }

// Element types as kernels see them: f32 as float, bf16 as __nv_bfloat16.
__device__ __forceinline__ float load_f32(const float* p) { return *p; }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_f32(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

inline unsigned grid_for(std::int64_t n, int block) { return unsigned((n + block - 1) / block); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats in shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// Calls fn with a typed null pointer for the float dtype of t: f32 -> float, bf16 -> __nv_bfloat16.
template <class Fn>
void dispatch_float(const Tensor& t, Fn&& fn) {
  if (t.dtype() == DType::f32) {
    fn(static_cast<float*>(nullptr));
  } else if (t.dtype() == DType::bf16) {
    fn(static_cast<__nv_bfloat16*>(nullptr));
  } else {
    SY_FAIL() << "CUDA ops take f32 or bf16, got " << t.describe();
  }
}

// The current device's facts that size grids and pick kernels, read from the driver once per
// device and thread (launch paths call these on every launch).
struct DeviceFacts {
  int sms = 0;    // streaming multiprocessors
  int major = 0;  // compute capability major (9: Hopper)
};
inline const DeviceFacts& current_device_facts() {
  constexpr int kMaxDevices = 64;
  thread_local DeviceFacts facts[kMaxDevices];
  int device = 0;
  SY_CUDA(cudaGetDevice(&device));
  SY_CHECK(device < kMaxDevices) << "CUDA device " << device << " is past the " << kMaxDevices << " this build expects";
  DeviceFacts& f = facts[device];
  if (f.sms == 0) {
    SY_CUDA(cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, device));
    SY_CUDA(cudaDeviceGetAttribute(&f.major, cudaDevAttrComputeCapabilityMajor, device));
  }
  return f;
}

// Raises a kernel's dynamic shared-memory limit (the default is 48 KiB).
template <class Kernel>
void allow_smem(Kernel kernel, std::size_t bytes) {
  SY_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace sy::cuda
