// Rotary position embedding on CUDA, forward and backward in one kernel (the backward is the
// same rotation by -angle).
#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;
constexpr std::int64_t kMaxBlocks = 65535 * 8;

// One thread per pair (i, i + D/2) of one row (b, h, t): reads both elements, writes both, so
// out may alias in (no other thread touches the pair). Each row is read and written once as
// two coalesced half-rows. The frequency theta^(-2i/D) and the angle are computed in fp32 per
// pair rather than read from a table: the kernel is bandwidth-bound and powf/sincosf hide
// under the loads. Angles grow with t, so fp32 costs ~t * 1e-7 radians of absolute error.
template <class T>
__global__ void rope_kernel(const T* in, T* out, std::int64_t pairs, std::int64_t seq, int head_dim, float theta,
                            float sign) {
  const int half = head_dim / 2;
  for (std::int64_t p = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; p < pairs;
       p += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t row = p / half;
    const int i = int(p % half);
    const float t = float(row % seq);
    const float frequency = powf(theta, -float(2 * i) / float(head_dim));
    float s, c;
    sincosf(sign * t * frequency, &s, &c);
    const std::int64_t first = row * head_dim + i;
    const float x1 = load_f32(in + first), x2 = load_f32(in + first + half);
    store_f32(out + first, x1 * c - x2 * s);
    store_f32(out + first + half, x1 * s + x2 * c);
  }
}

void rope(const Tensor& in, const Tensor& out, float theta, float sign, StreamRef stream) {
  const std::int64_t pairs = in.numel() / 2;
  if (pairs == 0) return;
  const std::int64_t blocks = (pairs + kBlock - 1) / kBlock;
  dispatch_float(in, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    rope_kernel<T><<<unsigned(blocks < kMaxBlocks ? blocks : kMaxBlocks), kBlock, 0, to_cuda(stream)>>>(
        static_cast<const T*>(in.data()), static_cast<T*>(out.data()), pairs, in.size(2), int(in.size(3)), theta,
        sign);
  });
  SY_CUDA_LAUNCH();
}

}  // namespace

void rope_forward(const Tensor& x, const Tensor& y, float theta, StreamRef stream) { rope(x, y, theta, 1.0f, stream); }

void rope_backward(const Tensor& dy, const Tensor& dx, float theta, StreamRef stream) {
  rope(dy, dx, theta, -1.0f, stream);
}

}  // namespace sy::cuda
