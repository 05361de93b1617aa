// Activations on CUDA in fp32, each input element read once and each output written once: GELU
// and ReLU as vectorized maps (elementwise_map.cuh), SwiGLU as grid-stride loops. Bandwidth-bound;
// where GELU follows a bf16 GEMM, gemm_gelu / gemm_dgelu (gemm_gelu.cu) apply it in the GEMM's
// epilogue instead and remove this round trip.
#include "core/ops/elementwise_map.cuh"

namespace sy::cuda {
namespace {

constexpr int kBlock = 256;
constexpr std::int64_t kMaxBlocks = 65535 * 8;

inline unsigned pointwise_grid(std::int64_t n) {
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  return unsigned(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

#define SY_GRID_STRIDE(i, n) \
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < (n); i += std::int64_t(gridDim.x) * blockDim.x)

constexpr float kGeluK0 = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluK1 = 0.044715f;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// y = 0.5 x (1 + tanh(k0 (x + k1 x^3))).
struct GeluForward {
  __device__ float operator()(float x, float) const { return 0.5f * x * (1.0f + tanhf(kGeluK0 * (x + kGeluK1 * x * x * x))); }
};
// dx = dy * (0.5 (1 + th) + 0.5 x (1 - th^2) k0 (1 + 3 k1 x^2)), th = tanh(k0 (x + k1 x^3)).
struct GeluBackward {
  __device__ float operator()(float x, float dy) const {
    const float th = tanhf(kGeluK0 * (x + kGeluK1 * x * x * x));
    return dy * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * kGeluK0 * (1.0f + 3.0f * kGeluK1 * x * x));
  }
};
// dx as GeluBackward and y as GeluForward, sharing the tanh.
struct GeluBackwardRecompute {
  __device__ void operator()(float x, float dy, float& dx, float& y) const {
    const float th = tanhf(kGeluK0 * (x + kGeluK1 * x * x * x));
    y = 0.5f * x * (1.0f + th);
    dx = dy * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * kGeluK0 * (1.0f + 3.0f * kGeluK1 * x * x));
  }
};
struct ReluForward {
  __device__ float operator()(float x, float) const { return x > 0.0f ? x : 0.0f; }
};
// The derivative at exactly 0 is 0, as on the CPU.
struct ReluBackward {
  __device__ float operator()(float x, float dy) const { return x > 0.0f ? dy : 0.0f; }
};

// One thread per output element (n, f): reads gate x[n, f] and up x[n, F + f], writes y[n, f].
// Consecutive threads touch consecutive f, so the gate half, the up half and y are each
// read or written coalesced.
template <class T>
__global__ void swiglu_forward_kernel(const T* x, T* y, std::int64_t n, std::int64_t hidden) {
  SY_GRID_STRIDE(i, n) {
    const std::int64_t row = i / hidden, f = i % hidden;
    const T* gate = x + row * 2 * hidden + f;
    const float g = load_f32(gate);
    store_f32(y + i, g * sigmoid(g) * load_f32(gate + hidden));
  }
}

// dgate = dy * up * s (1 + g (1 - s)), dup = dy * g * s, s = sigmoid(g); same layout as forward.
template <class T>
__global__ void swiglu_backward_kernel(const T* x, const T* dy, T* dx, std::int64_t n, std::int64_t hidden) {
  SY_GRID_STRIDE(i, n) {
    const std::int64_t row = i / hidden, f = i % hidden;
    const std::int64_t gate = row * 2 * hidden + f;
    const float g = load_f32(x + gate), u = load_f32(x + gate + hidden), d = load_f32(dy + i);
    const float s = sigmoid(g);
    store_f32(dx + gate, d * u * s * (1.0f + g * (1.0f - s)));
    store_f32(dx + gate + hidden, d * g * s);
  }
}

#undef SY_GRID_STRIDE

}  // namespace

void gelu_forward(const Tensor& x, const Tensor& y, StreamRef stream) {
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    launch_map2(static_cast<const T*>(x.data()), static_cast<const T*>(nullptr), static_cast<T*>(y.data()), x.numel(),
                GeluForward{}, stream);
  });
}

void gelu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream) {
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    launch_map2(static_cast<const T*>(x.data()), static_cast<const T*>(dy.data()), static_cast<T*>(dx.data()),
                x.numel(), GeluBackward{}, stream);
  });
}

void gelu_backward_recompute(const Tensor& x, const Tensor& dy, const Tensor& dx, const Tensor& y, StreamRef stream) {
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    launch_map2_out2(static_cast<const T*>(x.data()), static_cast<const T*>(dy.data()), static_cast<T*>(dx.data()),
                     static_cast<T*>(y.data()), x.numel(), GeluBackwardRecompute{}, stream);
  });
}

void relu_forward(const Tensor& x, const Tensor& y, StreamRef stream) {
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    launch_map2(static_cast<const T*>(x.data()), static_cast<const T*>(nullptr), static_cast<T*>(y.data()), x.numel(),
                ReluForward{}, stream);
  });
}

void relu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream) {
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    launch_map2(static_cast<const T*>(x.data()), static_cast<const T*>(dy.data()), static_cast<T*>(dx.data()),
                x.numel(), ReluBackward{}, stream);
  });
}

void swiglu_forward(const Tensor& x, const Tensor& y, StreamRef stream) {
  const std::int64_t n = y.numel(), hidden = y.size(1);
  if (n == 0) return;
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    swiglu_forward_kernel<T><<<pointwise_grid(n), kBlock, 0, to_cuda(stream)>>>(static_cast<const T*>(x.data()),
                                                                                static_cast<T*>(y.data()), n, hidden);
  });
  SY_CUDA_LAUNCH();
}

void swiglu_backward(const Tensor& x, const Tensor& dy, const Tensor& dx, StreamRef stream) {
  const std::int64_t n = dy.numel(), hidden = dy.size(1);
  if (n == 0) return;
  dispatch_float(x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    swiglu_backward_kernel<T><<<pointwise_grid(n), kBlock, 0, to_cuda(stream)>>>(
        static_cast<const T*>(x.data()), static_cast<const T*>(dy.data()), static_cast<T*>(dx.data()), n, hidden);
  });
  SY_CUDA_LAUNCH();
}

}  // namespace sy::cuda
