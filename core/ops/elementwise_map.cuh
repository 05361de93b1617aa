// Element-wise maps on CUDA with 16-byte accesses: out[i] = fn(a[i], b[i]) (b optional), in fp32.
// Each thread handles 8 consecutive elements per step (one 16-byte load per bf16 input, two
// for f32) when every pointer is 16-byte aligned, and the tail or unaligned tensors go one
// element at a time. Bandwidth-bound maps reach the copy bandwidth only with such wide
// accesses; one element per thread leaves them at about half.
#pragma once

#include "core/ops/cuda_common.cuh"

namespace sy::cuda {

__device__ __forceinline__ void load_vec8(const float* p, float (&v)[8]) {
  const float4 lo = reinterpret_cast<const float4*>(p)[0], hi = reinterpret_cast<const float4*>(p)[1];
  v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}
__device__ __forceinline__ void load_vec8(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(pairs[k]);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}
__device__ __forceinline__ void store_vec8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store_vec8(__nv_bfloat16* p, const float (&v)[8]) {
  uint4 raw;
  __nv_bfloat162* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) pairs[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// kVec consecutive elements in fp32: 8 by 16-byte loads (one for bf16, two for f32), 4 by one
// 8- or 16-byte load, 1 by a scalar load. The caller guarantees the alignment.
__device__ __forceinline__ void load_vec4(const float* p, float (&v)[4]) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void load_vec4(const __nv_bfloat16* p, float (&v)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
  const float2 lo = __bfloat1622float2(pairs[0]), hi = __bfloat1622float2(pairs[1]);
  v[0] = lo.x, v[1] = lo.y, v[2] = hi.x, v[3] = hi.y;
}
template <int kVec, class T>
__device__ __forceinline__ void load_vec(const T* p, float (&v)[kVec]) {
  static_assert(kVec == 1 || kVec == 4 || kVec == 8);
  if constexpr (kVec == 8) {
    load_vec8(p, v);
  } else if constexpr (kVec == 4) {
    load_vec4(p, v);
  } else {
    v[0] = load_f32(p);
  }
}
template <int kVec, class T>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[kVec]) {
  static_assert(kVec == 1 || kVec == 8);
  if constexpr (kVec == 8) {
    store_vec8(p, v);
  } else {
    store_f32(p, v[0]);
  }
}

// out may alias a or b (each element is read before it is written, by the same thread).
// fn: a functor with `__device__ float operator()(float a, float b) const`; b is 0 when absent.
template <class T, class Fn>
__global__ void map2_kernel(const T* a, const T* b, T* out, std::int64_t n,
                            std::int64_t vectors, Fn fn) {
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  const std::int64_t first = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::int64_t v = first; v < vectors; v += stride) {
    float va[8], vb[8] = {}, vo[8];
    load_vec8(a + 8 * v, va);
    if (b) load_vec8(b + 8 * v, vb);
#pragma unroll
    for (int k = 0; k < 8; ++k) vo[k] = fn(va[k], vb[k]);
    store_vec8(out + 8 * v, vo);
  }
  for (std::int64_t i = 8 * vectors + first; i < n; i += stride)
    store_f32(out + i, fn(load_f32(a + i), b ? load_f32(b + i) : 0.0f));
}

template <class T, class Fn>
void launch_map2(const T* a, const T* b, T* out, std::int64_t n, Fn fn, StreamRef stream) {
  if (n == 0) return;
  auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const std::int64_t vectors = aligned(a) && (!b || aligned(b)) && aligned(out) ? n / 8 : 0;
  constexpr int kBlock = 256;
  const std::int64_t work = vectors > 0 ? vectors : n;
  const std::int64_t blocks = std::min<std::int64_t>((work + kBlock - 1) / kBlock, 65535 * 8);
  map2_kernel<T, Fn><<<unsigned(blocks), kBlock, 0, to_cuda(stream)>>>(a, b, out, n, vectors, fn);
  SY_CUDA_LAUNCH();
}

// Two outputs from one read of two inputs: fn(a[i], b[i], out1[i], out2[i]), with
// `__device__ void operator()(float a, float b, float& out1, float& out2) const`. out1 may alias a
// or b (read before written by the same thread); out2 aliases neither.
template <class T, class Fn>
__global__ void map2_out2_kernel(const T* a, const T* b, T* out1, T* out2, std::int64_t n, std::int64_t vectors,
                                 Fn fn) {
  const std::int64_t stride = std::int64_t(gridDim.x) * blockDim.x;
  const std::int64_t first = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::int64_t v = first; v < vectors; v += stride) {
    float va[8], vb[8], o1[8], o2[8];
    load_vec8(a + 8 * v, va);
    load_vec8(b + 8 * v, vb);
#pragma unroll
    for (int k = 0; k < 8; ++k) fn(va[k], vb[k], o1[k], o2[k]);
    store_vec8(out1 + 8 * v, o1);
    store_vec8(out2 + 8 * v, o2);
  }
  for (std::int64_t i = 8 * vectors + first; i < n; i += stride) {
    float o1, o2;
    fn(load_f32(a + i), load_f32(b + i), o1, o2);
    store_f32(out1 + i, o1);
    store_f32(out2 + i, o2);
  }
}

template <class T, class Fn>
void launch_map2_out2(const T* a, const T* b, T* out1, T* out2, std::int64_t n, Fn fn, StreamRef stream) {
  if (n == 0) return;
  auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const std::int64_t vectors = aligned(a) && aligned(b) && aligned(out1) && aligned(out2) ? n / 8 : 0;
  constexpr int kBlock = 256;
  const std::int64_t work = vectors > 0 ? vectors : n;
  const std::int64_t blocks = std::min<std::int64_t>((work + kBlock - 1) / kBlock, 65535 * 8);
  map2_out2_kernel<T, Fn><<<unsigned(blocks), kBlock, 0, to_cuda(stream)>>>(a, b, out1, out2, n, vectors, fn);
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
