// Splits the time of a region into named phases for benchmarks: mark(phase) closes the phase
// that ran since the previous mark. On a GPU stream the marks are events, read once at the end
// (no synchronisation in between); on the CPU they are host clock readings.
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

  void start();                       // opens the first phase
  void mark(const std::string& phase);  // the time since the last mark belongs to `phase`
  // Waits for the stream, adds this run's phase times to the totals and clears the marks.
  void collect();
  const std::map<std::string, double>& totals_ms() const { return totals_ms_; }
  void reset_totals() { totals_ms_.clear(); }

 private:
  bool on_gpu_;
  StreamRef stream_;
  std::vector<std::string> phases_;  // phases_[i] ends at mark i + 1
  std::vector<void*> events_;        // GPU: one event per mark, reused across runs
  std::vector<std::chrono::steady_clock::time_point> clock_;
  std::size_t used_ = 0;
  std::map<std::string, double> totals_ms_;
};

// mark() through a possibly null timer: instrumented code calls this unconditionally.
inline void mark_phase(PhaseTimer* timer, const char* phase) {
  if (timer) timer->mark(phase);
}

}  // namespace sy
