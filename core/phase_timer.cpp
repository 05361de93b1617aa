// Phase timing with reusable CUDA events (GPU) or the steady clock (CPU).
#include "core/phase_timer.h"

#ifdef SY_WITH_CUDA
#include "core/cuda_check.h"
#endif

namespace sy {

PhaseTimer::PhaseTimer(bool on_gpu, StreamRef stream) : on_gpu_(on_gpu), stream_(stream) {
#ifndef SY_WITH_CUDA
  SY_CHECK(!on_gpu) << "PhaseTimer on a GPU stream needs the CUDA backend";
#endif
}

PhaseTimer::~PhaseTimer() {
#ifdef SY_WITH_CUDA
  for (void* e : events_) cudaEventDestroy(static_cast<cudaEvent_t>(e));
#endif
}

void PhaseTimer::start() {
  phases_.clear();
  used_ = 0;
  clock_.clear();
  mark("");
}

void PhaseTimer::mark(const std::string& phase) {
  if (used_ > 0) phases_.push_back(phase);
  if (on_gpu_) {
#ifdef SY_WITH_CUDA
    if (used_ == events_.size()) {
      cudaEvent_t e;
      SY_CUDA(cudaEventCreate(&e));
      events_.push_back(e);
    }
    SY_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(events_[used_]), static_cast<cudaStream_t>(stream_.handle)));
#endif
  } else {
    clock_.push_back(std::chrono::steady_clock::now());
  }
  ++used_;
}

void PhaseTimer::collect() {
  if (used_ == 0) return;
#ifdef SY_WITH_CUDA
  if (on_gpu_) SY_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(events_[used_ - 1])));
#endif
  for (std::size_t i = 0; i + 1 < used_; ++i) {
    double ms = 0;
    if (on_gpu_) {
#ifdef SY_WITH_CUDA
      float elapsed = 0;
      SY_CUDA(cudaEventElapsedTime(&elapsed, static_cast<cudaEvent_t>(events_[i]),
                                   static_cast<cudaEvent_t>(events_[i + 1])));
      ms = elapsed;
#endif
    } else {
      ms = std::chrono::duration<double, std::milli>(clock_[i + 1] - clock_[i]).count();
    }
    totals_ms_[phases_[i]] += ms;
  }
  phases_.clear();
  clock_.clear();
  used_ = 0;
}

}  // namespace sy
