// GEMM on CUDA through cuBLAS, fp32 accumulation for f32 and bf16 operands. cuBLAS is
// column-major: a row-major [R, C] matrix with leading dimension ld is the column-major [C, R]
// matrix with the same ld, its transpose. So row-major C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T: the operands swap places, keep their transpose flags, and
// M and N swap.
#include "core/ops/cublas_context.cuh"
#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

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
  if (k == 0 && (beta == 0.0f || beta == 1.0f)) {
    // An empty reduction (a weight gradient over no rows) leaves c = beta * c. At beta = 0, the
    // overwrite of a gradient, c may hold anything, NaN included, so it is cleared rather than
    // handed to cuBLAS; at beta = 1 there is nothing to do.
    if (beta == 1.0f) return;
    const std::size_t element = dtype_size(c.dtype());
    for (std::int64_t item = 0; item < batch; ++item) {
      char* matrix = static_cast<char*>(c.data()) + std::size_t(item * (batched ? c.stride(0) : 0)) * element;
      SY_CUDA(cudaMemset2DAsync(matrix, std::size_t(ldc) * element, 0, std::size_t(n) * element, std::size_t(m),
                                to_cuda(stream)));
    }
    return;
  }

  cublasHandle_t handle = cublas_context().bind(to_cuda(stream));
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
