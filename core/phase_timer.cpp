// Phase timing with reusable CUDA events (GPU) or the steady clock (CPU).
#include "core/phase_timer.h"

#include "core/check.h"
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
  for (Run& run : runs_)
    for (void* e : run.events) cudaEventDestroy(static_cast<cudaEvent_t>(e));
#endif
}

void PhaseTimer::start() {
  SY_CHECK(open_ < kRuns) << "PhaseTimer: " << kRuns << " runs are open; collect() one before starting another";
  ++open_;
  Run& run = newest();
  run.phases.clear();
  run.clock.clear();
  run.used = 0;
  mark("");
}

void PhaseTimer::mark(const std::string& phase) {
  if (open_ == 0) return;  // outside a run (an evaluation between steps): not timed
  Run& run = newest();
  if (run.used > 0) run.phases.push_back(phase);
  if (on_gpu_) {
#ifdef SY_WITH_CUDA
    if (run.used == run.events.size()) {
      cudaEvent_t e;
      SY_CUDA(cudaEventCreate(&e));
      run.events.push_back(e);
    }
    SY_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(run.events[run.used]), static_cast<cudaStream_t>(stream_.handle)));
#endif
  } else {
    run.clock.push_back(std::chrono::steady_clock::now());
  }
  ++run.used;
}

void PhaseTimer::collect() {
  if (open_ == 0) return;
  Run& run = runs_[oldest_];
  oldest_ = (oldest_ + 1) % kRuns;
  --open_;
#ifdef SY_WITH_CUDA
  if (on_gpu_) SY_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(run.events[run.used - 1])));
#endif
  for (std::size_t i = 0; i + 1 < run.used; ++i) {
    double ms = 0;
    if (on_gpu_) {
#ifdef SY_WITH_CUDA
      float elapsed = 0;
      SY_CUDA(cudaEventElapsedTime(&elapsed, static_cast<cudaEvent_t>(run.events[i]),
                                   static_cast<cudaEvent_t>(run.events[i + 1])));
      ms = elapsed;
#endif
    } else {
      ms = std::chrono::duration<double, std::milli>(run.clock[i + 1] - run.clock[i]).count();
    }
    totals_ms_[run.phases[i]] += ms;
  }
}

}  // namespace sy
