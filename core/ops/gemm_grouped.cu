// Grouped GEMM on CUDA: every non-empty group in one cublasGemmGroupedBatchedEx call (cuBLAS
// 12.5+), one "group" of cuBLAS per expert with a batch of one. Row-major products map to
// column-major cuBLAS as in gemm.cu: C^T = op(B)^T op(A)^T, so b is cuBLAS's A and a its B.
//
// The grouped call accepts only a, b and c of one dtype (f32, bf16 or f16 in, the same out). The
// other cases, chiefly the bf16 -> f32 weight gradient, and pointers it cannot take (see
// grouped_alignment_ok), fall back to one cublasGemmEx per non-empty group: correct, but G
// launches, each too small to fill the GPU when the groups are small.
#include <cstdint>
#include <vector>

#include "core/ops/cublas_context.cuh"
#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

// One row-major product c = op(a) op(b) in cuBLAS's operand order.
struct Problem {
  cublasOperation_t op_b = CUBLAS_OP_N, op_a = CUBLAS_OP_N;  // cuBLAS's transa, transb
  int m = 0, n = 0, k = 0;                                   // cuBLAS's M (our N), N (our M), K
  int ldb = 0, lda = 0, ldc = 0;
  const void* b = nullptr;
  const void* a = nullptr;
  void* c = nullptr;
};

const char* byte_pointer(const Tensor& t, std::int64_t element_offset) {
  return static_cast<const char*>(t.data()) + element_offset * std::int64_t(dtype_size(t.dtype()));
}

// cuBLAS's rule for 16-bit operands in grouped GEMM: a matrix whose rows are a multiple of 16
// (or 4) bytes long must start on a 16 (or 4) byte boundary. Our row blocks inherit it from
// their tensor's base; a view with an odd offset does not.
bool grouped_alignment_ok(const void* pointer, int ld, DType dtype) {
  const std::size_t row_bytes = std::size_t(ld) * dtype_size(dtype);
  const std::size_t alignment = row_bytes % 16 == 0 ? 16 : row_bytes % 4 == 0 ? 4 : 1;
  return reinterpret_cast<std::uintptr_t>(pointer) % alignment == 0;
}

bool grouped_call_accepts(const std::vector<Problem>& problems, DType ab_dtype, DType c_dtype) {
#if CUBLAS_VERSION >= 120500
  if (ab_dtype != c_dtype) return false;
  for (const Problem& p : problems) {
    if (!grouped_alignment_ok(p.b, p.ldb, ab_dtype) || !grouped_alignment_ok(p.a, p.lda, ab_dtype) ||
        !grouped_alignment_ok(p.c, p.ldc, c_dtype)) {
      return false;
    }
  }
  return true;
#else
  return false;
#endif
}

// All problems in one grouped call. Returns false, having run nothing, if cuBLAS reports the
// combination unsupported.
bool run_grouped_call(const std::vector<Problem>& problems, DType ab_dtype, DType c_dtype, float alpha, float beta,
                      cudaStream_t stream) {
#if CUBLAS_VERSION >= 120500
  const std::size_t count = problems.size();
  std::vector<cublasOperation_t> op_b(count), op_a(count);
  std::vector<int> m(count), n(count), k(count), ldb(count), lda(count), ldc(count), group_size(count, 1);
  std::vector<float> alphas(count, alpha), betas(count, beta);
  CublasContext& context = cublas_context();
  GroupedPointerArrays& pointer_arrays = context.pointer_arrays();
  const GroupedPointerArrays::Slot slot = pointer_arrays.acquire(3 * count);
  for (std::size_t i = 0; i < count; ++i) {
    const Problem& p = problems[i];
    op_b[i] = p.op_b;
    op_a[i] = p.op_a;
    m[i] = p.m;
    n[i] = p.n;
    k[i] = p.k;
    ldb[i] = p.ldb;
    lda[i] = p.lda;
    ldc[i] = p.ldc;
    slot.host[i] = const_cast<void*>(p.b);
    slot.host[count + i] = const_cast<void*>(p.a);
    slot.host[2 * count + i] = p.c;
  }
  SY_CUDA(cudaMemcpyAsync(slot.device, slot.host, 3 * count * sizeof(void*), cudaMemcpyHostToDevice, stream));
  const cudaDataType_t ab_type = cuda_data_type(ab_dtype), c_type = cuda_data_type(c_dtype);
  cublasHandle_t handle = context.bind(stream);
  const cublasStatus_t status = cublasGemmGroupedBatchedEx(
      handle, op_b.data(), op_a.data(), m.data(), n.data(), k.data(), alphas.data(), slot.device, ab_type, ldb.data(),
      slot.device + count, ab_type, lda.data(), betas.data(), slot.device + 2 * count, c_type, ldc.data(), int(count),
      group_size.data(), CUBLAS_COMPUTE_32F);
  pointer_arrays.release(stream);  // after the GEMM: it reads the device arrays when it runs
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return false;
  SY_CHECK_AS(ErrorKind::cublas, status == CUBLAS_STATUS_SUCCESS)
      << "cublasGemmGroupedBatchedEx over " << count << " groups failed: " << detail::cublas_status_name(status);
  return true;
#else
  return false;
#endif
}

void run_problems(const std::vector<Problem>& problems, DType ab_dtype, DType c_dtype, float alpha, float beta,
                  cudaStream_t stream) {
  if (problems.empty()) return;
  if (grouped_call_accepts(problems, ab_dtype, c_dtype) &&
      run_grouped_call(problems, ab_dtype, c_dtype, alpha, beta, stream)) {
    return;
  }
  cublasHandle_t handle = cublas_context().bind(stream);
  const cudaDataType_t ab_type = cuda_data_type(ab_dtype), c_type = cuda_data_type(c_dtype);
  for (const Problem& p : problems) {
    SY_CUBLAS(cublasGemmEx(handle, p.op_b, p.op_a, p.m, p.n, p.k, &alpha, p.b, ab_type, p.ldb, p.a, ab_type, p.lda,
                           &beta, p.c, c_type, p.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

// c = beta * c over `count` contiguous elements: what a product with an empty reduction leaves.
void scale(void* c, DType dtype, std::int64_t count, float beta, cudaStream_t stream) {
  if (beta == 1.0f || count == 0) return;
  if (beta == 0.0f) {  // all-zero bits are 0.0 in f32 and bf16; c may hold NaN, which beta * c would keep
    SY_CUDA(cudaMemsetAsync(c, 0, std::size_t(count) * dtype_size(dtype), stream));
    return;
  }
  check_fits_int("gemm_grouped", "elements to scale", count);
  SY_CUBLAS(cublasScalEx(cublas_context().bind(stream), int(count), &beta, CUDA_R_32F, c, cuda_data_type(dtype), 1,
                         CUDA_R_32F));
}

void check_cuda_dtype(const char* op, const Tensor& a) {
  SY_CHECK(a.dtype() == DType::f32 || a.dtype() == DType::bf16)
      << op << ": CUDA takes f32 or bf16 operands, got a " << a.describe();
}

}  // namespace

void gemm_grouped(const Tensor& a, const Tensor& b, const Tensor& c, const std::int64_t* group_rows, std::size_t groups,
                  bool trans_b, float alpha, float beta, StreamRef stream) {
  const char* op = "gemm_grouped";
  check_cuda_dtype(op, a);
  const std::int64_t rows = a.size(0), k = a.size(1), n = c.size(1);
  if (rows == 0 || n == 0) return;
  if (k == 0) {
    scale(c.data(), c.dtype(), rows * n, beta, to_cuda(stream));
    return;
  }
  check_fits_int(op, "N", n);
  check_fits_int(op, "K", k);
  std::vector<Problem> problems;
  problems.reserve(groups);
  std::int64_t first = 0;
  for (std::size_t g = 0; g < groups; ++g) {
    const std::int64_t m = group_rows[g];
    if (m > 0) {
      check_fits_int(op, "group rows", m);
      Problem p;
      p.op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
      p.m = int(n);
      p.n = int(m);
      p.k = int(k);
      p.ldb = int(trans_b ? k : n);
      p.lda = int(k);
      p.ldc = int(n);
      p.b = byte_pointer(b, std::int64_t(g) * k * n);
      p.a = byte_pointer(a, first * k);
      p.c = const_cast<char*>(byte_pointer(c, first * n));
      problems.push_back(p);
    }
    first += m;
  }
  run_problems(problems, a.dtype(), c.dtype(), alpha, beta, to_cuda(stream));
}

void gemm_grouped_trans_a(const Tensor& a, const Tensor& b, const Tensor& c, const std::int64_t* group_rows,
                          std::size_t groups, float alpha, float beta, StreamRef stream) {
  const char* op = "gemm_grouped_trans_a";
  check_cuda_dtype(op, a);
  const std::int64_t k = a.size(1), n = b.size(1);
  if (k == 0 || n == 0) return;
  check_fits_int(op, "K", k);
  check_fits_int(op, "N", n);
  std::vector<Problem> problems;
  problems.reserve(groups);
  std::int64_t first = 0;
  for (std::size_t g = 0; g < groups; ++g) {
    const std::int64_t m = group_rows[g];
    char* c_group = const_cast<char*>(byte_pointer(c, std::int64_t(g) * k * n));
    if (m == 0) {
      scale(c_group, c.dtype(), k * n, beta, to_cuda(stream));
    } else {
      check_fits_int(op, "group rows", m);
      // Column-major c[g]^T [N, K] = b_g^T [N, M_g] a_g [M_g, K]: the reduction runs over M_g.
      Problem p;
      p.op_a = CUBLAS_OP_T;
      p.m = int(n);
      p.n = int(k);
      p.k = int(m);
      p.ldb = int(n);
      p.lda = int(k);
      p.ldc = int(n);
      p.b = byte_pointer(b, first * n);
      p.a = byte_pointer(a, first * k);
      p.c = c_group;
      problems.push_back(p);
    }
    first += m;
  }
  run_problems(problems, a.dtype(), c.dtype(), alpha, beta, to_cuda(stream));
}

}  // namespace sy::cuda
