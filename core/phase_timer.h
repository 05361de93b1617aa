// Splits the time of a region into named phases for benchmarks: mark(phase) closes the phase
// that ran since the previous mark. On a GPU stream the marks are events, read once at the end
// (no synchronisation in between); on the CPU they are host clock readings.
//
// Up to two runs may be open at once, so a training loop can start step i + 1 before it reads
// the phases of step i: collect() reads the oldest open run.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "core/stream.h"

namespace sy {

class PhaseTimer {
 public:
  PhaseTimer(bool on_gpu, StreamRef stream);
  ~PhaseTimer();
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

  void start();                         // opens a run and its first phase
  // The time since the last mark belongs to `phase`; nothing when no run is open.
  void mark(const std::string& phase);
  // Waits for the oldest open run (on the GPU, its last event), adds its phase times to the
  // totals and closes it. Nothing when no run is open.
  void collect();
  const std::map<std::string, double>& totals_ms() const { return totals_ms_; }
  void reset_totals() { totals_ms_.clear(); }

 private:
  struct Run {
    std::vector<std::string> phases;  // phases[i] ends at mark i + 1
    std::vector<void*> events;        // GPU: one event per mark, reused across runs
    std::vector<std::chrono::steady_clock::time_point> clock;
    std::size_t used = 0;
  };
  static constexpr int kRuns = 2;
  Run& newest() { return runs_[(oldest_ + open_ - 1) % kRuns]; }

  bool on_gpu_;
  StreamRef stream_;
  Run runs_[kRuns];
  int oldest_ = 0, open_ = 0;
  std::map<std::string, double> totals_ms_;
};

// mark() through a possibly null timer: instrumented code calls this unconditionally.
inline void mark_phase(PhaseTimer* timer, const char* phase) {
  if (timer) timer->mark(phase);
}

}  // namespace sy
