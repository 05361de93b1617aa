// Random fills from the counter RNG: checks, dispatch and the CPU version. Element i draws
// counter (index_offset + i), so a shard of a parameter filled with its global offset gets
// exactly the values of the unsharded parameter.
#include <type_traits>

#include "core/ops.h"
#include "core/ops/cpu_common.h"
#include "core/ops/cuda_ops.h"

namespace sy {
namespace {

template <class Draw>
void fill_cpu(const Tensor& t, Draw draw) {
  cpu::dispatch_float(t, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    T* p = t.ptr<T>();
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = from_double<T>(draw(std::uint64_t(i)));
  });
}

}  // namespace

void fill_uniform(const Tensor& t, RngKey key, float low, float high, std::uint64_t index_offset, StreamRef stream) {
  check_contiguous("fill_uniform", "t", t);
  check_float("fill_uniform", "t", t);
  if (t.is_cuda()) {
    SY_ON_CUDA(cuda::fill_uniform(t, key, low, high, index_offset, stream));
    return;
  }
  fill_cpu(t, [&](std::uint64_t i) { return double(low + (high - low) * philox_uniform(key, index_offset + i)); });
}

void fill_normal(const Tensor& t, RngKey key, float mean, float std, std::uint64_t index_offset, StreamRef stream) {
  check_contiguous("fill_normal", "t", t);
  check_float("fill_normal", "t", t);
  if (t.is_cuda()) {
    SY_ON_CUDA(cuda::fill_normal(t, key, mean, std, index_offset, stream));
    return;
  }
  fill_cpu(t, [&](std::uint64_t i) { return double(mean + std * philox_normal(key, index_offset + i)); });
}

}  // namespace sy
