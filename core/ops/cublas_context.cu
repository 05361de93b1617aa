// The per-thread cuBLAS context: the cuBLAS and cuBLASLt handles, their workspace, and the
// grouped-GEMM pointer-array ring.
#include "core/ops/cublas_context.cuh"

#include <memory>
#include <vector>

namespace sy::cuda {
namespace {

constexpr std::size_t kWorkspaceBytes = std::size_t(32) << 20;
// Capacities grow in steps of this many pointers, so a layer with a few more local experts
// than the last one does not reallocate again.
constexpr std::size_t kPointerGranularity = 64;

}  // namespace

GroupedPointerArrays::~GroupedPointerArrays() {
  // No checks: this may run at thread exit, after an error. cudaFree waits for the device.
  for (cudaEvent_t event : events_) {
    if (event) cudaEventDestroy(event);
  }
  if (device_) cudaFree(device_);
  if (host_) cudaFreeHost(host_);
}

void GroupedPointerArrays::wait_all() {
  for (int slot = 0; slot < kSlots; ++slot) {
    if (recorded_[std::size_t(slot)]) SY_CUDA(cudaEventSynchronize(events_[std::size_t(slot)]));
  }
}

void GroupedPointerArrays::free_buffers() {
  if (device_) SY_CUDA(cudaFree(device_));
  if (host_) SY_CUDA(cudaFreeHost(host_));
  device_ = nullptr;
  host_ = nullptr;
  capacity_ = 0;
}

GroupedPointerArrays::Slot GroupedPointerArrays::acquire(std::size_t count) {
  if (!events_[0]) {
    for (cudaEvent_t& event : events_) SY_CUDA(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  }
  if (count > capacity_) {
    wait_all();
    free_buffers();
    const std::size_t capacity = (count + kPointerGranularity - 1) / kPointerGranularity * kPointerGranularity;
    const std::size_t bytes = std::size_t(kSlots) * capacity * sizeof(void*);
    SY_CUDA(cudaMallocHost(reinterpret_cast<void**>(&host_), bytes));
    SY_CUDA(cudaMalloc(reinterpret_cast<void**>(&device_), bytes));
    capacity_ = capacity;
  }
  const std::size_t slot = std::size_t(next_);
  if (recorded_[slot]) SY_CUDA(cudaEventSynchronize(events_[slot]));
  return Slot{host_ + slot * capacity_, device_ + slot * capacity_};
}

void GroupedPointerArrays::release(cudaStream_t stream) {
  const std::size_t slot = std::size_t(next_);
  SY_CUDA(cudaEventRecord(events_[slot], stream));
  recorded_[slot] = true;
  next_ = (next_ + 1) % kSlots;
}

CublasContext::CublasContext() : workspace_(Device::cuda, kWorkspaceBytes) {
  SY_CUBLAS(cublasCreate(&handle_));
  // fp32 accumulation throughout: no TF32, and no split-K reductions in bf16 output precision.
  SY_CUBLAS(cublasSetMathMode(handle_,
                              cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  SY_CUBLAS(cublasLtCreate(&lt_handle_));
}

CublasContext::~CublasContext() {
  // No checks: this may run at thread exit, after an error.
  if (lt_handle_) cublasLtDestroy(lt_handle_);
  if (handle_) cublasDestroy(handle_);
}

// cublasSetStream resets the workspace to cuBLAS's default pool, so ours is set after it. The
// workspace is shared by every stream this thread uses the handle on, as cuBLAS's own default
// workspace is.
cublasHandle_t CublasContext::bind(cudaStream_t stream) {
  SY_CUBLAS(cublasSetStream(handle_, stream));
  SY_CUBLAS(cublasSetWorkspace(handle_, workspace_.data(), workspace_.bytes()));
  return handle_;
}

CublasContext& cublas_context() {
  thread_local std::vector<std::unique_ptr<CublasContext>> contexts;
  int device = 0;
  SY_CUDA(cudaGetDevice(&device));
  if (std::size_t(device) >= contexts.size()) contexts.resize(std::size_t(device) + 1);
  std::unique_ptr<CublasContext>& context = contexts[std::size_t(device)];
  if (!context) context = std::make_unique<CublasContext>();
  return *context;
}

}  // namespace sy::cuda
