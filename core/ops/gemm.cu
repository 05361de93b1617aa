// GEMM on CUDA through cuBLAS, fp32 accumulation for f32 and bf16 operands. cuBLAS is
// column-major: a row-major [R, C] matrix with leading dimension ld is the column-major [C, R]
// matrix with the same ld, its transpose. So row-major C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T: the operands swap places, keep their transpose flags, and
// M and N swap.
#include <climits>
#include <memory>
#include <vector>

#include "core/ops/cuda_common.cuh"
#include "core/storage.h"

namespace sy::cuda {
namespace {

constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;

// A cuBLAS handle and its workspace on one device. The workspace is allocated once, with the
// handle, so a training step never allocates; it is shared by every stream this thread uses
// the handle on, as cuBLAS's own default workspace is.
class CublasContext {
 public:
  CublasContext() : workspace_(Device::cuda, kWorkspaceBytes) {
    SY_CUBLAS(cublasCreate(&handle_));
    // fp32 accumulation throughout: no TF32, and no split-K reductions in bf16 output precision.
    SY_CUBLAS(cublasSetMathMode(handle_,
                                cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  }
  ~CublasContext() {
    if (handle_) cublasDestroy(handle_);  // no check: this may run at thread exit, after an error
  }
  CublasContext(const CublasContext&) = delete;
  CublasContext& operator=(const CublasContext&) = delete;

  // cublasSetStream resets the workspace to cuBLAS's default pool, so ours is set after it.
  cublasHandle_t bind(cudaStream_t stream) {
    SY_CUBLAS(cublasSetStream(handle_, stream));
    SY_CUBLAS(cublasSetWorkspace(handle_, workspace_.data(), workspace_.bytes()));
    return handle_;
  }

 private:
  Storage workspace_;  // declared first, so it is freed after the handle is destroyed
  cublasHandle_t handle_ = nullptr;
};

// The calling thread's handle for the current device, bound to `stream`. One per thread because
// a handle must not be used by two threads at once; one per device because a handle belongs to
// the device that was current when it was created. Destroyed when the thread exits.
cublasHandle_t cublas_handle(cudaStream_t stream) {
  thread_local std::vector<std::unique_ptr<CublasContext>> contexts;
  int device = 0;
  SY_CUDA(cudaGetDevice(&device));
  if (std::size_t(device) >= contexts.size()) contexts.resize(std::size_t(device) + 1);
  std::unique_ptr<CublasContext>& context = contexts[std::size_t(device)];
  if (!context) context = std::make_unique<CublasContext>();
  return context->bind(stream);
}

cudaDataType_t cuda_data_type(DType dtype) { return dtype == DType::f32 ? CUDA_R_32F : CUDA_R_16BF; }

// cuBLAS wants ld >= the stored row length even for a single row, whose stride is arbitrary.
std::int64_t leading_dimension(const Tensor& t) {
  const std::int64_t row_length = t.size(-1) > 1 ? t.size(-1) : 1;
  return t.size(-2) > 1 && t.stride(-2) > row_length ? t.stride(-2) : row_length;
}

void check_fits_int(const char* op, const char* what, std::int64_t value) {
  SY_CHECK(value <= INT_MAX) << op << ": " << what << " " << value << " exceeds cuBLAS's 32-bit limit";
}

// Runs the (batched) product; `batched` selects stride(0) as the batch stride.
void gemm_cublas(const char* op, const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b,
                 float alpha, float beta, StreamRef stream, bool batched) {
  SY_CHECK(a.dtype() == DType::f32 || a.dtype() == DType::bf16)
      << op << ": CUDA takes f32 or bf16 operands, got a " << a.describe();
  const std::int64_t batch = batched ? c.size(0) : 1;
  const std::int64_t m = c.size(-2), n = c.size(-1), k = trans_a ? a.size(-2) : a.size(-1);
  if (batch == 0 || m == 0 || n == 0) return;
  const std::int64_t lda = leading_dimension(a), ldb = leading_dimension(b), ldc = leading_dimension(c);
  check_fits_int(op, "M", m);
  check_fits_int(op, "N", n);
  check_fits_int(op, "K", k);
  check_fits_int(op, "batch", batch);
  check_fits_int(op, "leading dimension of a", lda);
  check_fits_int(op, "leading dimension of b", ldb);
  check_fits_int(op, "leading dimension of c", ldc);

  cublasHandle_t handle = cublas_handle(to_cuda(stream));
  // Column-major C^T [N, M] = op(B)^T [N, K] x op(A)^T [K, M]: b first, then a.
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t ab_type = cuda_data_type(a.dtype()), c_type = cuda_data_type(c.dtype());
  if (!batched) {
    SY_CUBLAS(cublasGemmEx(handle, op_b, op_a, int(n), int(m), int(k), &alpha, b.data(), ab_type, int(ldb), a.data(),
                           ab_type, int(lda), &beta, c.data(), c_type, int(ldc), CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT));
    return;
  }
  SY_CUBLAS(cublasGemmStridedBatchedEx(handle, op_b, op_a, int(n), int(m), int(k), &alpha, b.data(), ab_type, int(ldb),
                                       (long long)b.stride(0), a.data(), ab_type, int(lda), (long long)a.stride(0),
                                       &beta, c.data(), c_type, int(ldc), (long long)c.stride(0), int(batch),
                                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha, float beta,
          StreamRef stream) {
  gemm_cublas("gemm", a, b, c, trans_a, trans_b, alpha, beta, stream, false);
}

void gemm_batched(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b, float alpha,
                  float beta, StreamRef stream) {
  gemm_cublas("gemm_batched", a, b, c, trans_a, trans_b, alpha, beta, stream, true);
}

}  // namespace sy::cuda
