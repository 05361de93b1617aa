// Rotary position embedding on CUDA, forward and backward in one kernel (the backward is the
// same rotation by -angle). Operands are [B, H, T, D] views with any B, H, T strides, so the
// rotation runs in place on the q and k columns of the token-major qkv projection.
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "core/ops/elementwise_map.cuh"
#include "core/storage.h"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;
constexpr std::int64_t kMaxBlocks = 65535 * 8;

// cos and sin of t * theta^(-2i/D) for t < seq, i < D/2: [seq, D/2] each, f32, computed once in
// double on the device (so they equal the CPU reference's angles to f32 rounding) and kept for
// the life of the process. The kernel is then a pure stream over x: recomputing powf and
// sincosf per pair made it compute-bound at about twice its memory time.
__global__ void rope_table_kernel(float* cos_table, float* sin_table, int seq, int half, double theta) {
  const int index = blockIdx.x * blockDim.x + threadIdx.x;
  if (index >= seq * half) return;
  const int t = index / half, i = index % half;
  const double angle = double(t) * pow(theta, -2.0 * double(i) / double(2 * half));
  cos_table[index] = float(cos(angle));
  sin_table[index] = float(sin(angle));
}

struct RopeTable {
  Storage storage;
  const float* cos_table = nullptr;
  const float* sin_table = nullptr;
};

// The table for (device, seq, half, theta), built on first use. Built on `stream`, so work
// queued after it on that stream sees it; other streams see it once the host has waited.
const RopeTable& rope_table(int seq, int half, float theta, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, std::uint32_t>, RopeTable> tables;
  int device = 0;
  SY_CUDA(cudaGetDevice(&device));
  std::uint32_t theta_bits = 0;
  std::memcpy(&theta_bits, &theta, sizeof theta_bits);
  const std::lock_guard<std::mutex> lock(mutex);
  auto [it, inserted] = tables.try_emplace({device, seq, half, theta_bits});
  RopeTable& table = it->second;
  if (inserted) {
    const std::size_t entries = std::size_t(seq) * std::size_t(half);
    table.storage = Storage(Device::cuda, 2 * entries * sizeof(float));
    float* base = static_cast<float*>(table.storage.data());
    table.cos_table = base;
    table.sin_table = base + entries;
    rope_table_kernel<<<grid_for(std::int64_t(entries), kBlock), kBlock, 0, stream>>>(base, base + entries, seq, half,
                                                                                      double(theta));
    SY_CUDA_LAUNCH();
    SY_CUDA(cudaStreamSynchronize(stream));  // once per table: later callers may use other streams
  }
  return table;
}

struct RopeView {
  std::int64_t batch, head, row;  // element strides of B, H, T (D is contiguous)
  int heads, seq, half;
};

// One thread per VEC consecutive pairs (i .. i + VEC - 1, each with i + D/2) of one row (b, h, t):
// it reads both halves, then writes both, so out may alias in. With VEC = 8 each half moves as
// one 16-byte access; rows are visited with t fastest, so a warp covers whole rows.
template <class T, int VEC>
__global__ void rope_kernel(const T* in, T* out, RopeView v, std::int64_t groups, const float* cos_table,
                            const float* sin_table, float sign) {
  const int groups_per_row = v.half / VEC;
  for (std::int64_t g = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; g < groups;
       g += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t row = g / groups_per_row;
    const int i0 = int(g % groups_per_row) * VEC;
    const int t = int(row % v.seq);
    const std::int64_t bh = row / v.seq;
    const std::int64_t first = (bh / v.heads) * v.batch + (bh % v.heads) * v.head + t * v.row + i0;
    float x1[VEC], x2[VEC], c[VEC], s[VEC];
    if constexpr (VEC == 8) {
      load_vec8(in + first, x1);
      load_vec8(in + first + v.half, x2);
      load_vec8(cos_table + std::int64_t(t) * v.half + i0, c);
      load_vec8(sin_table + std::int64_t(t) * v.half + i0, s);
    } else {
      x1[0] = load_f32(in + first);
      x2[0] = load_f32(in + first + v.half);
      c[0] = cos_table[std::int64_t(t) * v.half + i0];
      s[0] = sin_table[std::int64_t(t) * v.half + i0];
    }
    float y1[VEC], y2[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float sk = sign * s[k];
      y1[k] = x1[k] * c[k] - x2[k] * sk;
      y2[k] = x1[k] * sk + x2[k] * c[k];
    }
    if constexpr (VEC == 8) {
      store_vec8(out + first, y1);
      store_vec8(out + first + v.half, y2);
    } else {
      store_f32(out + first, y1[0]);
      store_f32(out + first + v.half, y2[0]);
    }
  }
}

void rope(const Tensor& in, const Tensor& out, float theta, float sign, StreamRef stream) {
  const std::int64_t pairs = in.numel() / 2;
  if (pairs == 0) return;
  const RopeView v{in.stride(0), in.stride(1), in.stride(2), int(in.size(1)), int(in.size(2)), int(in.size(3) / 2)};
  const cudaStream_t s = to_cuda(stream);
  const RopeTable& table = rope_table(v.seq, v.half, theta, s);
  // 16-byte accesses need every half-row to start 16-byte aligned: 8 elements of bf16 and f32
  // alike are at least 16 bytes, so the strides, D/2 and the base must line up with 8 elements.
  const std::size_t element = dtype_size(in.dtype());
  const bool vectorized = v.half % 8 == 0 && v.batch % 8 == 0 && v.head % 8 == 0 && v.row % 8 == 0 &&
                          reinterpret_cast<std::uintptr_t>(in.data()) % (8 * element) == 0 &&
                          reinterpret_cast<std::uintptr_t>(out.data()) % (8 * element) == 0;
  const int vec = vectorized ? 8 : 1;
  const std::int64_t groups = pairs / vec;
  const unsigned blocks = unsigned(std::min<std::int64_t>((groups + kBlock - 1) / kBlock, kMaxBlocks));
  dispatch_float(in, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* ip = static_cast<const T*>(in.data());
    T* op = static_cast<T*>(out.data());
    if (vectorized) {
      rope_kernel<T, 8><<<blocks, kBlock, 0, s>>>(ip, op, v, groups, table.cos_table, table.sin_table, sign);
    } else {
      rope_kernel<T, 1><<<blocks, kBlock, 0, s>>>(ip, op, v, groups, table.cos_table, table.sin_table, sign);
    }
  });
  SY_CUDA_LAUNCH();
}

}  // namespace

void rope_forward(const Tensor& x, const Tensor& y, float theta, StreamRef stream) { rope(x, y, theta, 1.0f, stream); }

void rope_backward(const Tensor& dy, const Tensor& dx, float theta, StreamRef stream) {
  rope(dy, dx, theta, -1.0f, stream);
}

}  // namespace sy::cuda
