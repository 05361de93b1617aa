// GEMM with a GELU epilogue on CUDA through cuBLASLt. One matmul accumulates in fp32 and, in its
// epilogue, stores both the pre-activation and its GELU (CUBLASLT_EPILOGUE_GELU_AUX), or scales
// the product by gelu' of the saved pre-activation (CUBLASLT_EPILOGUE_DGELU). The separate
// elementwise pass, which reads and writes the whole [M, N] activation again, disappears.
//
// Operands map to column-major as in gemm.cu: row-major out = a op(b) is column-major
// out^T = op(b)^T a^T, so b is cuBLASLt's A, a is its B, out is its D (and its C, unread at
// beta = 0), and the aux matrix (pre) has D's layout: column-major [N, M] with ld N.
//
// A plan (descriptors, layouts and the heuristic's algorithm) is built on the first call of a
// shape and cached, so later calls only set the aux pointer and run. bf16 only: f32 takes the
// unfused route (gemm, then the GELU kernel), and so does a bf16 shape the epilogue cannot take,
// which is named once on stderr.
#include <cstdio>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>

#include "core/ops/cublas_context.cuh"
#include "core/ops/cuda_common.cuh"

namespace sy::cuda {
namespace {

// Owners of cuBLASLt's host descriptors. No checks on destroy: this may run at thread exit.
struct MatmulDescDeleter {
  void operator()(cublasLtMatmulDesc_t desc) const { cublasLtMatmulDescDestroy(desc); }
};
struct MatrixLayoutDeleter {
  void operator()(cublasLtMatrixLayout_t layout) const { cublasLtMatrixLayoutDestroy(layout); }
};
struct PreferenceDeleter {
  void operator()(cublasLtMatmulPreference_t preference) const { cublasLtMatmulPreferenceDestroy(preference); }
};
using MatmulDesc = std::unique_ptr<std::remove_pointer_t<cublasLtMatmulDesc_t>, MatmulDescDeleter>;
using MatrixLayout = std::unique_ptr<std::remove_pointer_t<cublasLtMatrixLayout_t>, MatrixLayoutDeleter>;
using Preference = std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>, PreferenceDeleter>;

// Everything a plan depends on, in our row-major terms. Every tensor is bf16 (the only dtype
// planned), and pre and out are contiguous (ld N, batch stride M N), so their layout follows from
// the sizes. Alignments are part of the key because the heuristic picks kernels for the alignment
// it sees: that of the pointers at planning time.
struct PlanKey {
  int device = 0;
  GeluEpilogue epilogue = GeluEpilogue::forward;
  bool trans_b = false;
  std::int64_t batch = 1, m = 0, n = 0, k = 0;
  std::int64_t lda = 0, ldb = 0, stride_a = 0, stride_b = 0;
  std::uint32_t align_a = 0, align_b = 0, align_pre = 0, align_out = 0;  // bytes, at most 256

  auto tie() const {
    return std::tie(device, epilogue, trans_b, batch, m, n, k, lda, ldb, stride_a, stride_b, align_a, align_b,
                    align_pre, align_out);
  }
  bool operator<(const PlanKey& other) const { return tie() < other.tie(); }
};

struct Plan {
  bool fused = false;  // false: the unfused route, for a shape the epilogue cannot take
  MatmulDesc desc;
  MatrixLayout b_layout, a_layout, out_layout;  // cuBLASLt's A, B, and C = D
  cublasLtMatmulAlgo_t algo{};
};

// The largest power of two, up to 256, dividing the byte address of every batch item of t.
std::uint32_t item_alignment(const Tensor& t, std::int64_t batch) {
  std::uintptr_t bits = reinterpret_cast<std::uintptr_t>(t.data()) | std::uintptr_t(256);
  if (batch > 1) bits |= std::uintptr_t(t.stride(0)) * dtype_size(t.dtype());
  return std::uint32_t(bits & (~bits + 1));
}

// A column-major bf16 [rows, cols] layout with leading dimension ld, `batch` matrices
// `batch_stride` elements apart (0: one matrix shared by every item).
MatrixLayout make_layout(std::int64_t rows, std::int64_t cols, std::int64_t ld, std::int64_t batch,
                         std::int64_t batch_stride) {
  cublasLtMatrixLayout_t raw = nullptr;
  SY_CUBLAS(cublasLtMatrixLayoutCreate(&raw, CUDA_R_16BF, std::uint64_t(rows), std::uint64_t(cols), ld));
  MatrixLayout layout(raw);
  if (batch > 1) {
    const std::int32_t count = std::int32_t(batch);
    SY_CUBLAS(cublasLtMatrixLayoutSetAttribute(raw, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    SY_CUBLAS(cublasLtMatrixLayoutSetAttribute(raw, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batch_stride,
                                               sizeof batch_stride));
  }
  return layout;
}

std::string describe_problem(const PlanKey& key) {
  std::ostringstream text;
  text << "bf16 ";
  if (key.batch > 1) text << "batch " << key.batch << " of ";
  text << "[" << key.m << ", " << key.k << "] @ [" << key.k << ", " << key.n << "]"
       << (key.trans_b ? " (b stored transposed)" : "");
  return text.str();
}

// Builds the plan for `key`; a plan with fused = false, and the reason in `why_unfused`, when
// cuBLASLt has no epilogue kernel for it. The heuristic reads the aux pointer's alignment, so the
// plan is made with the call's own pre pointer.
Plan build_plan(const PlanKey& key, void* pre_pointer, std::string& why_unfused) {
  Plan plan;
  // The aux matrix's leading dimension (N) must be a multiple of 8; its batch stride M N follows.
  if (key.n % 8 != 0) {
    why_unfused = "N = " + std::to_string(key.n) + " is not a multiple of 8, which the aux matrix's ld must be";
    return plan;
  }
  CublasContext& context = cublas_context();

  cublasLtMatmulDesc_t desc = nullptr;
  SY_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  plan.desc.reset(desc);
  const cublasOperation_t op_b = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = CUBLAS_OP_N;
  SY_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof op_b));
  SY_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof op_a));
  const cublasLtEpilogue_t epilogue =
      key.epilogue == GeluEpilogue::forward ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_DGELU;
  SY_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
  // The aux matrix is pre: written by GELU_AUX, read by DGELU; bf16, with D's layout.
  SY_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &pre_pointer,
                                           sizeof pre_pointer));
  const std::int64_t aux_ld = key.n, aux_batch_stride = key.m * key.n;
  SY_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld));
  SY_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, &aux_batch_stride,
                                           sizeof aux_batch_stride));
  const std::int32_t aux_type = CUDA_R_16BF;
  SY_CUBLAS(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &aux_type, sizeof aux_type));

  // b as stored: column-major [N, K], or [K, N] when it holds b^T. a: column-major [K, M].
  plan.b_layout = make_layout(key.trans_b ? key.k : key.n, key.trans_b ? key.n : key.k, key.ldb, key.batch,
                              key.stride_b);
  plan.a_layout = make_layout(key.k, key.m, key.lda, key.batch, key.stride_a);
  plan.out_layout = make_layout(key.n, key.m, key.n, key.batch, key.m * key.n);

  cublasLtMatmulPreference_t raw_preference = nullptr;
  SY_CUBLAS(cublasLtMatmulPreferenceCreate(&raw_preference));
  const Preference preference(raw_preference);
  const std::uint64_t workspace_bytes = context.workspace_bytes();
  SY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                 &workspace_bytes, sizeof workspace_bytes));
  // Split-K partial sums only in fp32 (no in-place or bf16 reduction), as the cuBLAS handle's
  // CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION asks.
  const std::uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  SY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                 &reduction, sizeof reduction));
  SY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                 &key.align_b, sizeof key.align_b));
  SY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                 &key.align_a, sizeof key.align_a));
  SY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                 &key.align_out, sizeof key.align_out));
  SY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(raw_preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                 &key.align_out, sizeof key.align_out));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(context.lt_handle(), desc, plan.b_layout.get(), plan.a_layout.get(),
                                     plan.out_layout.get(), plan.out_layout.get(), raw_preference, 1, &result, &found);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0)) {
    why_unfused = "cublasLtMatmulAlgoGetHeuristic found no algorithm";
    return plan;
  }
  SY_CHECK_AS(ErrorKind::cublas, status == CUBLAS_STATUS_SUCCESS && result.state == CUBLAS_STATUS_SUCCESS)
      << "cublasLtMatmulAlgoGetHeuristic for " << describe_problem(key) << " failed: "
      << detail::cublas_status_name(status == CUBLAS_STATUS_SUCCESS ? result.state : status);
  plan.algo = result.algo;
  plan.fused = true;
  return plan;
}

// The plan for this call, built and cached on first use; nullptr when the call takes the unfused
// route by design (f32, K = 0) or has nothing to compute. Plans are per thread, like the handles,
// and keyed by device.
const Plan* find_plan(const char* op, GeluEpilogue epilogue, const Tensor& a, const Tensor& b, const Tensor& pre,
                      const Tensor& out, bool trans_b) {
  PlanKey key;
  key.epilogue = epilogue;
  key.trans_b = trans_b;
  key.batch = a.dim() == 3 ? out.size(0) : 1;
  key.m = out.size(-2);
  key.n = out.size(-1);
  key.k = a.size(-1);
  if (key.batch == 0 || key.m == 0 || key.n == 0 || key.k == 0 || a.dtype() != DType::bf16) return nullptr;
  key.lda = leading_dimension(a);
  key.ldb = leading_dimension(b);
  check_fits_int(op, "M", key.m);
  check_fits_int(op, "N", key.n);
  check_fits_int(op, "K", key.k);
  check_fits_int(op, "batch", key.batch);
  check_fits_int(op, "leading dimension of a", key.lda);
  check_fits_int(op, "leading dimension of b", key.ldb);
  if (key.batch > 1) {
    key.stride_a = a.stride(0);
    key.stride_b = b.stride(0);
  }
  key.align_a = item_alignment(a, key.batch);
  key.align_b = item_alignment(b, key.batch);
  key.align_pre = item_alignment(pre, key.batch);
  key.align_out = item_alignment(out, key.batch);
  SY_CUDA(cudaGetDevice(&key.device));

  thread_local std::map<PlanKey, Plan> plans;
  const auto cached = plans.find(key);
  if (cached != plans.end()) return &cached->second;
  std::string why_unfused;
  Plan plan = build_plan(key, pre.data(), why_unfused);
  if (!plan.fused) {
    std::ostringstream line;
    line << "switchyard: rank " << error_rank() << ": " << op << ": no cuBLASLt GELU epilogue for "
         << describe_problem(key) << " (" << why_unfused << "); running the GEMM and the GELU kernel separately\n";
    std::fputs(line.str().c_str(), stderr);
  }
  return &plans.emplace(key, std::move(plan)).first->second;
}

// gemm, then the GELU kernel: forward writes pre then act; backward writes dact into out and
// applies gelu' in place (the elementwise map reads each element before writing it).
void run_unfused(GeluEpilogue epilogue, const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& out,
                 bool trans_b, StreamRef stream) {
  const Tensor& product = epilogue == GeluEpilogue::forward ? pre : out;
  if (a.dim() == 3) {
    cuda::gemm_batched(a, b, product, false, trans_b, 1.0f, 0.0f, stream);
  } else {
    cuda::gemm(a, b, product, false, trans_b, 1.0f, 0.0f, stream);
  }
  if (epilogue == GeluEpilogue::forward) {
    cuda::gelu_forward(pre, out, stream);
  } else {
    cuda::gelu_backward(pre, out, out, stream);
  }
}

// Batched DGELU takes the unfused route: with cuBLAS 13.0 on an H200, cuBLASLt runs it as the
// GEMM plus a separate epilogue::globalKernel that took 440 us per expert layer at the benchmark
// shape (8 x 2560 x 3072), five times the GEMM-then-gelu_backward pair it replaces.
bool batched_dgelu(GeluEpilogue epilogue, const Tensor& a) {
  return epilogue == GeluEpilogue::backward && a.dim() == 3;
}

void run(const char* op, GeluEpilogue epilogue, const Tensor& a, const Tensor& b, const Tensor& pre,
         const Tensor& out, bool trans_b, StreamRef stream) {
  if (out.numel() == 0) return;
  const Plan* plan = batched_dgelu(epilogue, a) ? nullptr : find_plan(op, epilogue, a, b, pre, out, trans_b);
  if (!plan || !plan->fused) {
    run_unfused(epilogue, a, b, pre, out, trans_b, stream);
    return;
  }
  CublasContext& context = cublas_context();
  // The cached descriptor carries the aux pointer of the call that planned it; this call's pre
  // has the same alignment (it is in the key), so only the address changes.
  void* aux = pre.data();
  SY_CUBLAS(cublasLtMatmulDescSetAttribute(plan->desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux,
                                           sizeof aux));
  const float alpha = 1.0f, beta = 0.0f;
  SY_CUBLAS(cublasLtMatmul(context.lt_handle(), plan->desc.get(), &alpha, b.data(), plan->b_layout.get(), a.data(),
                           plan->a_layout.get(), &beta, out.data(), plan->out_layout.get(), out.data(),
                           plan->out_layout.get(), &plan->algo, context.workspace(), context.workspace_bytes(),
                           to_cuda(stream)));
}

}  // namespace

void gemm_gelu(const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& act, bool trans_b,
               StreamRef stream) {
  run("gemm_gelu", GeluEpilogue::forward, a, b, pre, act, trans_b, stream);
}

void gemm_dgelu(const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& dpre, bool trans_b,
                StreamRef stream) {
  run("gemm_dgelu", GeluEpilogue::backward, a, b, pre, dpre, trans_b, stream);
}

bool gemm_gelu_fused(GeluEpilogue epilogue, const Tensor& a, const Tensor& b, const Tensor& pre, const Tensor& out,
                     bool trans_b) {
  const char* op = epilogue == GeluEpilogue::forward ? "gemm_gelu" : "gemm_dgelu";
  if (out.numel() == 0 || batched_dgelu(epilogue, a)) return false;
  const Plan* plan = find_plan(op, epilogue, a, b, pre, out, trans_b);
  return plan && plan->fused;
}

}  // namespace sy::cuda
