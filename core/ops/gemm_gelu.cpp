// GEMM with a GELU epilogue: argument checks, dispatch, and the CPU reference, which is the
// unfused composition (gemm or gemm_batched, then gelu_forward or gelu_backward) so that it
// gives exactly what the separate ops give.
#include "core/ops.h"
#include "core/ops/cuda_ops.h"
#include "core/ops/gemm_checks.h"

namespace sy {
namespace {

// Checks a, b, pre and `out` (act or dpre, called `out_name`); returns whether the call is batched.
bool check_gemm_gelu_args(const char* op, const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& out,
                          const char* out_name, bool trans_b) {
  SY_CHECK(a.defined()) << op << ": a is not set";
  SY_CHECK(a.dim() == 2 || a.dim() == 3) << op << ": a must be [M, K] or [batch, M, K], got " << a.describe();
  check_gemm_args(op, a, b, pre, false, trans_b, a.dim(), "pre");
  check_dtype(op, "pre", pre, a.dtype());
  check_contiguous(op, "pre", pre);
  SY_CHECK(out.defined()) << op << ": " << out_name << " is not set";
  check_contiguous(op, out_name, out);
  check_shape(op, out_name, out, pre.shape());
  check_dtype(op, out_name, out, a.dtype());
  check_same_device(op, {&a, &pre, &out});
  SY_CHECK(out.numel() == 0 || out.data() != pre.data())
      << op << ": pre and " << out_name << " must be different buffers, both are at " << pre.data();
  return a.dim() == 3;
}

// The product a @ op(b) into c, plain or batched.
void product(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_b, bool batched, StreamRef stream) {
  if (batched) {
    gemm_batched(a, b, c, false, trans_b, 1.0f, 0.0f, stream);
  } else {
    gemm(a, b, c, false, trans_b, 1.0f, 0.0f, stream);
  }
}

}  // namespace

void gemm_gelu(const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& act, bool trans_b,
               StreamRef stream) {
  const bool batched = check_gemm_gelu_args("gemm_gelu", a, b, pre, act, "act", trans_b);
  if (a.is_cuda()) {
    SY_ON_CUDA(cuda::gemm_gelu(a, b, pre, act, trans_b, stream));
    return;
  }
  product(a, b, pre, trans_b, batched, stream);
  gelu_forward(pre, act, stream);
}

void gemm_dgelu(const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& dpre, bool trans_b,
                StreamRef stream) {
  const bool batched = check_gemm_gelu_args("gemm_dgelu", a, b, pre, dpre, "dpre", trans_b);
  if (a.is_cuda()) {
    SY_ON_CUDA(cuda::gemm_dgelu(a, b, pre, dpre, trans_b, stream));
    return;
  }
  // dact = a @ op(b) lands in dpre, and gelu' is applied in place: no temporary.
  product(a, b, dpre, trans_b, batched, stream);
  gelu_backward(pre, dpre, dpre, stream);
}

bool gemm_gelu_fused(GeluEpilogue epilogue, const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& out,
                     bool trans_b) {
  const bool forward = epilogue == GeluEpilogue::forward;
  check_gemm_gelu_args(forward ? "gemm_gelu" : "gemm_dgelu", a, b, pre, out, forward ? "act" : "dpre", trans_b);
  if (!a.is_cuda()) return false;
#ifdef SY_WITH_CUDA
  return cuda::gemm_gelu_fused(epilogue, a, b, pre, out, trans_b);
#else
  SY_FAIL() << "this build has no CUDA backend, so gemm_gelu_fused cannot plan a CUDA call";
#endif
}

}  // namespace sy
