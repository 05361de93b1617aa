// The phase timer on the CPU clock: phases add up per name, two runs may be open at once and
// are collected oldest first, a third is refused, and marks outside a run are not timed.
#include <thread>

#include "core/phase_timer.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

TEST(PhaseTimer, TwoOpenRunsAreCollectedOldestFirst) {
  PhaseTimer timer(false, {});
  timer.start();
  sleep_ms(80);
  timer.mark("a");
  timer.start();  // the second run opens before the first is read
  sleep_ms(10);
  timer.mark("b");
  timer.collect();
  ASSERT_EQ(timer.totals_ms().count("a"), 1u);
  EXPECT_EQ(timer.totals_ms().count("b"), 0u) << "the second run is still open";
  EXPECT_GE(timer.totals_ms().at("a"), 80.0);
  timer.collect();
  ASSERT_EQ(timer.totals_ms().count("b"), 1u);
  EXPECT_GE(timer.totals_ms().at("b"), 10.0);
  // b's 10 ms is its own, not a's 80 (a late wake-up of tens of ms on a loaded machine still fits).
  EXPECT_LT(timer.totals_ms().at("b"), timer.totals_ms().at("a"));
  timer.collect();  // nothing open: nothing changes
  EXPECT_EQ(timer.totals_ms().size(), 2u);
}

TEST(PhaseTimer, PhasesOfOneNameAddUpAcrossRuns) {
  PhaseTimer timer(false, {});
  for (int run = 0; run < 3; ++run) {
    timer.start();
    sleep_ms(5);
    timer.mark("step");
    timer.collect();
  }
  EXPECT_GE(timer.totals_ms().at("step"), 15.0);
  timer.reset_totals();
  EXPECT_TRUE(timer.totals_ms().empty());
}

TEST(PhaseTimer, AThirdOpenRunIsRefusedAndMarksOutsideARunAreIgnored) {
  PhaseTimer timer(false, {});
  timer.mark("before");  // no run open
  timer.start();
  timer.start();
  expect_error([&] { timer.start(); }, "PhaseTimer: 2 runs are open; collect() one before starting another");
  timer.collect();
  timer.collect();
  EXPECT_EQ(timer.totals_ms().count("before"), 0u);
}

}  // namespace
}  // namespace sy::test
