// The per-thread, per-device cuBLAS and cuBLASLt handles shared by the GEMM ops, their workspace,
// and the device pointer arrays that cuBLAS's grouped GEMM reads. Everything here is allocated
// once and reused, so a training step never calls the allocator.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>

#include "core/cuda_check.h"
#include "core/storage.h"

namespace sy::cuda {

// Matrix addresses for cublasGemmGroupedBatchedEx, which takes sizes from host arrays but the
// addresses only from device memory. The host side is pinned so that cudaMemcpyAsync is a real
// DMA queued on the stream: a copy from pageable memory is staged by the driver and may block
// the host, and cannot be captured into a CUDA graph. The copy runs later than the call that
// queued it, so a slot's host and device halves stay untouched until the GEMM that read them
// has run; a small ring of slots, each guarded by an event, lets the host queue a few grouped
// GEMMs ahead before it waits.
class GroupedPointerArrays {
 public:
  struct Slot {
    void** host = nullptr;    // pinned, `capacity` entries
    void** device = nullptr;  // device, `capacity` entries
  };

  GroupedPointerArrays() = default;
  ~GroupedPointerArrays();
  GroupedPointerArrays(const GroupedPointerArrays&) = delete;
  GroupedPointerArrays& operator=(const GroupedPointerArrays&) = delete;

  // A slot of at least `count` pointers that no queued work still reads. Grows (after waiting
  // for every slot) only when `count` exceeds the current capacity.
  Slot acquire(std::size_t count);
  // Marks the slot from the last acquire() busy until the work queued on `stream` so far has run.
  void release(cudaStream_t stream);

 private:
  static constexpr int kSlots = 4;
  void wait_all();
  void free_buffers();

  std::size_t capacity_ = 0;    // pointers per slot
  void** host_ = nullptr;       // kSlots * capacity_, pinned
  void** device_ = nullptr;     // kSlots * capacity_
  std::array<cudaEvent_t, kSlots> events_{};
  std::array<bool, kSlots> recorded_{};
  int next_ = 0;
};

// A cuBLAS handle, a cuBLASLt handle, the workspace both use and the grouped-GEMM pointer arrays
// on one device.
class CublasContext {
 public:
  CublasContext();
  ~CublasContext();
  CublasContext(const CublasContext&) = delete;
  CublasContext& operator=(const CublasContext&) = delete;

  // The handle with `stream` and our workspace set.
  cublasHandle_t bind(cudaStream_t stream);
  // cuBLASLt takes the stream and the workspace with every cublasLtMatmul, so its handle needs no
  // binding. It shares the one workspace with the cuBLAS handle: calls from this thread on one
  // stream run in order, as for cuBLAS alone.
  cublasLtHandle_t lt_handle() const { return lt_handle_; }
  void* workspace() const { return workspace_.data(); }
  std::size_t workspace_bytes() const { return workspace_.bytes(); }
  GroupedPointerArrays& pointer_arrays() { return pointer_arrays_; }

 private:
  Storage workspace_;  // declared first, so it is freed after the handles are destroyed
  GroupedPointerArrays pointer_arrays_;
  cublasHandle_t handle_ = nullptr;
  cublasLtHandle_t lt_handle_ = nullptr;
};

// The calling thread's context for the current device. One per thread because a handle must not
// be used by two threads at once; one per device because a handle belongs to the device that was
// current when it was created. Destroyed when the thread exits.
CublasContext& cublas_context();

inline cudaDataType_t cuda_data_type(DType dtype) { return dtype == DType::f32 ? CUDA_R_32F : CUDA_R_16BF; }

inline void check_fits_int(const char* op, const char* what, std::int64_t value) {
  SY_CHECK(value <= INT_MAX) << op << ": " << what << " " << value << " exceeds cuBLAS's 32-bit limit";
}

// The leading dimension cuBLAS is given for a row-major matrix t ([..., rows, row length]): its
// row stride, but at least the row length even for a single row, whose stride is arbitrary.
inline std::int64_t leading_dimension(const Tensor& t) {
  const std::int64_t row_length = t.size(-1) > 1 ? t.size(-1) : 1;
  return t.size(-2) > 1 && t.stride(-2) > row_length ? t.stride(-2) : row_length;
}

}  // namespace sy::cuda
